"""numba_cpu specifics: the fused whole-epoch trainer equals the layer-by-layer path and the
reference, the float32 exponential, thread control, and the on-disk JIT cache report.

(The kernel-by-kernel comparison with the reference is tests/test_kernels.py.)
"""
import numpy as np
import pytest

import fastnn
from conftest import tolerance
from fastnn import SGD, Adam, BatchNorm, Dense, Residual, Sequential
from fastnn.backends import available_backends

pytestmark = pytest.mark.skipif(not available_backends()["numba_cpu"].usable,
                                reason="numba_cpu is not usable here")

OPTIMIZERS = {"sgd": lambda: SGD(0.05), "momentum": lambda: SGD(0.05, momentum=0.9),
              "adam": lambda: Adam(1e-2)}
LAST = {"mse": "tanh", "cross_entropy": "identity", "binary_cross_entropy": "sigmoid"}


#: kind -> minibatch size; "wide" has enough work per batch to split it into row chunks
#: trained by separate threads, "big" layers big enough for threaded BLAS instead (see
#: kernels/numba_cpu/_split.py), the others run on one thread
BATCH = {"mlp": 16, "batchnorm_residual": 16, "wide": 64, "big": 64}


def network(kind: str, last: str):
    if kind == "mlp":
        return [Dense(12, 24, "relu"), Dense(24, 16, "sigmoid"), Dense(16, 3, last)]
    if kind == "big":
        return [Dense(12, 640, "relu"), Dense(640, 640, "tanh"), Dense(640, 3, last)]
    if kind == "wide":
        return [Dense(12, 384, "relu"), BatchNorm(384), Residual(Dense(384, 384, "tanh")),
                Dense(384, 3, last)]
    return [Dense(12, 16, "leaky_relu"), BatchNorm(16),
            Residual([Dense(16, 16, "tanh"), BatchNorm(16), Dense(16, 16, "relu")]),
            Residual(Dense(16, 16, "softmax")), Dense(16, 3, last)]


def targets(loss: str, rng, n: int):
    if loss == "cross_entropy":
        return rng.integers(0, 3, n)
    if loss == "binary_cross_entropy":
        return rng.integers(0, 2, (n, 3)).astype(float)
    return rng.standard_normal((n, 3))


def train(backend, fuse, kind, loss, optimizer, dtype, n=300):
    """300 rows in minibatches (20 steps for batch 16; the last batch short) from seed 3;
    the trained model and its history."""
    batch = BATCH[kind]
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((n, 12)), targets(loss, rng, n)
    model = Sequential(network(kind, LAST[loss]), backend=backend, seed=3, dtype=dtype)
    model.fuse = fuse
    history = model.fit(X, y, loss=loss, optimizer=OPTIMIZERS[optimizer](), epochs=1,
                        batch_size=batch, verbose=0)
    return model, history


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("loss", sorted(LAST))
@pytest.mark.parametrize("kind", sorted(BATCH))
def test_fused_epoch_equals_layer_path_and_reference(kind, loss, optimizer, dtype):
    ref, ref_hist = train("reference", False, kind, loss, optimizer, dtype)
    tol = tolerance(dtype, BATCH[kind])
    for fuse in (True, False):
        model, hist = train("numba_cpu", fuse, kind, loss, optimizer, dtype)
        assert (model._make_trainer(fastnn.losses.get(loss), SGD(), BATCH[kind])
                is not None) == fuse
        weights, want = model.parameters(), ref.parameters()
        if optimizer == "adam" and dtype == "float32":
            # Adam divides by √v̂: where a gradient is ~0, float32 rounding can flip the sign
            # of m̂/√v̂ and move that weight by up to lr (1e-2) a step. Allow that for a few
            # weights in a thousand; a wrong kernel would move most of them.
            off = ~np.isclose(weights, want, **tol)
            assert off.mean() < 1e-3, f"{off.sum()} weights differ, fuse={fuse}"
            assert np.abs(weights - want).max() <= 1e-2 * 20, "more than lr per step"
            weights, want = weights[~off], want[~off]
        np.testing.assert_allclose(weights, want, **tol, err_msg=f"weights, fuse={fuse}")
        np.testing.assert_allclose(model._state, ref._state, **tol,
                                   err_msg=f"BatchNorm statistics, fuse={fuse}")
        np.testing.assert_allclose(hist["loss"], ref_hist["loss"], **tol)
        if "accuracy" in ref_hist.history:
            assert hist["accuracy"] == ref_hist["accuracy"]


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


def test_set_num_threads_sets_numba_and_keeps_kernel_blas_single():
    import numba

    from fastnn.threads import _blas_controllers

    before = fastnn.get_num_threads()
    try:
        fastnn.set_num_threads(1)
        assert numba.get_num_threads() == 1 and fastnn.get_num_threads() == 1
        kernel, others = _blas_controllers()
        assert kernel and all(c.num_threads == 1 for c in kernel)
        assert all(c.num_threads == 1 for c in others)
    finally:
        fastnn.set_num_threads(before)
    assert all(c.num_threads == 1 for c in _blas_controllers()[0])
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
    assert status.total == 8 and status.signatures >= status.compiled
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


@pytest.mark.parametrize("kind, split", [("mlp", (1, 1)), ("wide", (2, 1)), ("big", (1, 2))])
def test_how_each_network_uses_two_threads(kind, split):
    """(row chunks, BLAS threads) per network on 2 threads: none, row chunks with
    single-threaded BLAS, or one chunk with BLAS on both threads."""
    model = Sequential(network(kind, "identity"), backend="numba_cpu")
    trainer = model._make_trainer(fastnn.losses.get("mse"), SGD(0.1), BATCH[kind])
    assert trainer.plan.split(2) == split
    model.fit(np.ones((70, 12)), np.ones((70, 3)), loss="mse", epochs=1, batch_size=BATCH[kind],
              verbose=0)
    from fastnn.threads import _blas_controllers
    assert all(c.num_threads == 1 for c in _blas_controllers()[0])   # back to 1 after fit
