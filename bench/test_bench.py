"""Benchmarks: one training step per configuration × contender, and mnist inference.

Contenders are every usable fastnn backend (from the registry) and the framework peers when
installed, all computing in `--bench-dtype` (float32 by default).
How and when these are timed: bench/README.md and conftest.py.
"""
import numpy as np
import pytest

from fastnn import benchmark as bm

CONTENDERS = bm.usable_contenders()
TRAIN = [pytest.param(c, n, id=f"{c}-{n}") for c in bm.CONFIGS for n in CONTENDERS]
PREDICT = [pytest.param(c, n, id=f"{c}-{n}") for c, cfg in bm.CONFIGS.items() if cfg.predict
           for n in CONTENDERS]
needs_torch = pytest.mark.skipif(not bm.torch_installed(), reason="PyTorch is not installed")
needs_jax = pytest.mark.skipif(not bm.jax_installed(), reason="JAX is not installed")


@pytest.mark.parametrize("name, contender", TRAIN)
def test_train_step(benchmark, bench_run, name, contender):
    config = bm.CONFIGS[name]
    steps = bench_run.steps(config)
    contest = bm.Contest(config, contender, steps, dtype=bench_run.dtype)
    before = contest.parameters()
    seconds = bench_run.time(benchmark, contest.train, group=f"train {name}")
    after = contest.parameters()
    assert after.dtype == bench_run.dtype, f"{contender} trained in {after.dtype}"
    assert np.isfinite(after).all()
    assert not np.array_equal(before, after), "training did not change the parameters"
    if seconds is not None:
        bench_run.record(benchmark, config, "train", contender, seconds / steps)


@pytest.mark.parametrize("name, contender", PREDICT)
def test_predict(benchmark, bench_run, name, contender):
    config = bm.CONFIGS[name]
    batches = bm.PREDICT_BATCHES if bench_run.timed else 1
    contest = bm.Contest(config, contender, 1, predict_samples=bm.PREDICT_BATCH * batches,
                         dtype=bench_run.dtype)
    seconds = bench_run.time(benchmark, contest.predict, group=f"predict {name}")
    expected = bm.build_model(config, "reference", dtype=bench_run.dtype).predict(
        contest.X_predict)
    got = contest.predict()
    assert got.dtype == bench_run.dtype
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    if seconds is not None:
        bench_run.record(benchmark, config, "predict", contender, seconds / batches)


@pytest.mark.parametrize("peer", [pytest.param("torch_cpu", marks=needs_torch),
                                  pytest.param("jax_cpu", marks=needs_jax)])
@pytest.mark.parametrize("name", list(bm.CONFIGS))
def test_peer_computes_the_same_network(name, peer, bench_dtype):
    """A framework peer holds fastnn's initial weights, so both time one computation; JAX
    takes fastnn's SGD step with either loss, PyTorch with cross-entropy (its MSELoss also
    averages over outputs: the same work, a scaled gradient)."""
    config = bm.CONFIGS[name]
    fast = bm.Contest(config, "reference", 1, predict_samples=64, dtype=bench_dtype)
    other = bm.Contest(config, peer, 1, predict_samples=64, dtype=bench_dtype)
    np.testing.assert_allclose(other.parameters(), fast.parameters())
    np.testing.assert_allclose(other.predict(), fast.predict(), rtol=1e-4, atol=1e-5)
    if peer == "jax_cpu" or config.loss == "cross_entropy":
        fast.train()
        other.train()
        np.testing.assert_allclose(other.parameters(), fast.parameters(), rtol=1e-4, atol=1e-6)


FUSED = [c for c in CONTENDERS if c in ("numba_cpu", "cython", "numba_cuda")]


@pytest.mark.parametrize("contender", FUSED)
@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_scheduled_epoch(benchmark, bench_run, contender, schedule):
    """tiny, 8 epochs of its minibatches: with a cosine schedule (a new learning rate every
    epoch, plan data) an epoch costs what a constant-rate epoch does; compare the two groups'
    per-epoch times (extra_info["us_per_epoch"]). The plan is built once either way."""
    from fastnn.callbacks import LearningRateScheduler
    from fastnn.schedules import cosine

    config = bm.CONFIGS["tiny"]
    steps, epochs = bench_run.steps(config), 8 if bench_run.timed else 2
    X, y = bm.make_data(config, steps, dtype=bench_run.dtype)
    model = bm.build_model(config, contender, dtype=bench_run.dtype)
    optimizer = bm.SGD(bm.LR)

    def train():
        callbacks = [] if schedule == "constant" else [LearningRateScheduler(cosine(epochs))]
        return model.fit(X, y, loss=config.loss, optimizer=optimizer, epochs=epochs,
                         batch_size=config.batch, shuffle=False, verbose=0, callbacks=callbacks)

    train()                                                # compile outside the timing
    seconds = bench_run.time(benchmark, train, group=f"tiny epoch, {contender}")
    history = train()
    assert len(model._plans) == 1
    assert (len(set(history["lr"])) > 1) == (schedule == "cosine")
    if seconds is not None:
        benchmark.extra_info["us_per_epoch"] = 1e6 * seconds / epochs
