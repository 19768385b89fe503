"""numba_cpu specifics: Adam's state in the fused trainer, the float32 exponential, thread
control, and the on-disk JIT cache report.

(The kernel-by-kernel comparison with the reference is tests/test_kernels.py, the fused
trainer against the layer path and the reference tests/test_fused_trainers.py.)
"""
import numpy as np
import pytest

import fastnn
from fastnn import SGD, Adam, Dense, Sequential
from fastnn.backends import available_backends
from test_fused_trainers import BATCH, network

pytestmark = pytest.mark.skipif(not available_backends()["numba_cpu"].usable,
                                reason="numba_cpu is not usable here")


def test_adam_step_count_and_state_are_the_optimizers():
    """The fused trainer advances Adam's t per step and trains its m, v in place, so a second
    fit continues exactly like the layer-by-layer path."""
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((50, 12)), rng.integers(0, 3, 50)
    results = []
    for fuse in (True, False):
        model = Sequential(network("mlp", "identity"), backend="numba_cpu", seed=0,
                           dtype="float64")
        model.fuse = fuse
        opt = Adam(1e-2)
        for _ in range(2):
            model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=2, batch_size=8,
                      verbose=0)
        results.append((opt.t, opt.m.copy(), model.parameters().copy()))
    assert results[0][0] == results[1][0] == 4 * 7
    for a, b in zip(results[0][1:], results[1][1:]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_thread_count_changes_between_fits():
    """Per-thread gradient buffers follow the thread count; results do not depend on it
    beyond rounding."""
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((256, 12)), rng.standard_normal((256, 3))
    before = fastnn.get_num_threads()
    weights = []
    try:
        for threads in (1, before):
            fastnn.set_num_threads(threads)
            model = Sequential(network("mlp", "identity"), backend="numba_cpu", seed=0,
                               dtype="float64")
            model.fit(X, y, loss="mse", optimizer=SGD(0.05), epochs=2, batch_size=64,
                      verbose=0)
            weights.append(model.parameters().copy())
    finally:
        fastnn.set_num_threads(before)
    np.testing.assert_allclose(weights[0], weights[1], rtol=1e-10, atol=1e-12)


def test_float32_exponential_is_accurate():
    from numba import njit

    from fastnn.kernels.numba_cpu._exp import exp_neg

    @njit
    def apply(x, out):
        for i in range(x.size):
            out[i] = exp_neg(x[i])

    x = -np.linspace(0, 87, 100_001).astype(np.float32)
    out = np.empty_like(x)
    apply(x, out)
    np.testing.assert_allclose(out, np.exp(x.astype(np.float64)), rtol=3e-7, atol=0)
    apply(np.array([-88.0, -1e30, -np.inf], np.float32), out[:3])
    assert (out[:3] == 0).all()


def test_set_num_threads_sets_numba_and_every_blas():
    import numba

    from fastnn.kernels._threads import blas_controllers

    before = fastnn.get_num_threads()
    try:
        fastnn.set_num_threads(1)
        assert numba.get_num_threads() == 1 and fastnn.get_num_threads() == 1
        kernel, others = blas_controllers()
        assert kernel and all(c.num_threads == 1 for c in kernel + others)
    finally:
        fastnn.set_num_threads(before)
    assert all(c.num_threads == before for c in sum(blas_controllers(), []))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            fastnn.set_num_threads(bad)
    with pytest.raises(ValueError, match="exceeds"):
        fastnn.set_num_threads(numba.config.NUMBA_NUM_THREADS + 1)


def test_cache_status_reports_the_compiled_kernels():
    from fastnn.kernels.numba_cpu import cache_status

    model = fastnn.Sequential([Dense(3, 2)], backend="numba_cpu")
    model.fit(np.ones((4, 3)), np.ones((4, 2)), loss="mse", epochs=1, verbose=0)
    model.predict(np.ones((2, 3)))
    status = cache_status()
    assert status.trainer_warm and status.compiled >= 3
    assert status.total == 10 and status.signatures >= status.compiled
    assert status.directory


def test_fits_from_two_python_threads_at_once():
    """Numba's workqueue layer aborts on concurrent parallel launches; the backend serialises
    its launches, so two fits in two threads just take turns (and train as they would alone)."""
    import threading

    rng = np.random.default_rng(4)
    X, y = rng.standard_normal((512, 12)), rng.standard_normal((512, 3))

    def fit(out, index):
        model = Sequential(network("wide", "identity"), backend="numba_cpu", seed=index,
                           dtype="float64")
        model.fit(X, y, loss="mse", optimizer=SGD(0.01), epochs=2, batch_size=64, verbose=0)
        out[index] = model.parameters().copy()

    together, alone = {}, {}
    threads = [threading.Thread(target=fit, args=(together, i)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        fit(alone, i)
    for i in range(2):
        np.testing.assert_array_equal(together[i], alone[i])


def test_unknown_optimizer_runs_layer_by_layer():
    """An optimizer class the epoch kernel does not know falls back to the layer path."""

    class HalfSGD(SGD):
        def _step(self, kernels, params, grads):
            kernels.sgd(params, grads, self.lr / 2)

    model = Sequential(network("mlp", "identity"), backend="numba_cpu")
    loss = fastnn.losses.get("mse")
    assert model._make_trainer(loss, HalfSGD(0.1), 8) is None
    assert model._make_trainer(loss, SGD(0.1), 8) is not None


def test_changed_sources_drop_the_cached_kernels(tmp_path, monkeypatch):
    """Numba checks a cached kernel only against its own file; the package-wide digest drops
    every cached kernel when any source changes (a stale inlined constant had corrupted
    memory)."""
    from fastnn.kernels.numba_cpu import cache

    directory = tmp_path / "cache"
    directory.mkdir()
    kernel = cache._kernels()[0]
    monkeypatch.setattr(kernel._cache, "_cache_path", str(directory))
    (directory / "dense.x-1.py311.nbi").write_text("index")
    (directory / "dense.x-1.py311.1.nbc").write_text("code")
    cache.drop_stale_cache()                              # no stamp yet: dropped, stamped
    assert sorted(p.name for p in directory.iterdir()) == ["fastnn-sources.sha256"]
    (directory / "dense.x-1.py311.nbi").write_text("index")
    cache.drop_stale_cache()                              # same sources: kept
    assert (directory / "dense.x-1.py311.nbi").exists()
    (directory / "fastnn-sources.sha256").write_text("an older digest")
    cache.drop_stale_cache()                              # changed sources: dropped
    assert not (directory / "dense.x-1.py311.nbi").exists()


@pytest.mark.parametrize("kind, split", [("mlp", (1, 1)), ("wide", (2, 1)),
                                         ("threaded", (1, 2))])
def test_how_each_network_uses_two_threads(kind, split):
    """(row chunks, BLAS threads) per network on 2 threads: none, row chunks with
    single-threaded BLAS, or one chunk with BLAS on both threads (a network of 1 M
    parameters and 128 × 1024 × 1024 multiply-adds a minibatch)."""
    from fastnn.kernels._threads import blas_controllers

    layers, batch = ((network(kind, "identity"), BATCH[kind]) if kind != "threaded" else
                     ([Dense(12, 1024, "relu"), Dense(1024, 1024, "relu"), Dense(1024, 3)], 128))
    model = Sequential(layers, backend="numba_cpu")
    trainer = model._make_trainer(fastnn.losses.get("mse"), SGD(0.1), batch)
    assert trainer.split(2) == split
    limits = [c.num_threads for c in blas_controllers()[0]]
    model.fit(np.ones((150, 12)), np.ones((150, 3)), loss="mse", epochs=1, batch_size=batch,
              verbose=0)
    assert [c.num_threads for c in blas_controllers()[0]] == limits   # restored after fit
