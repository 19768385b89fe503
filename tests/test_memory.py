"""fit, predict and evaluate need O(batch) memory beyond X, whatever the size of X (issue 14).

The peak of traced allocations (NumPy's buffers are traced by ``tracemalloc``) while a call
runs, for a C-contiguous float32 X already in the model's dtype, must stay under 5% of X: the
minibatch buffers, the int64 epoch order (8 bytes a row: 3.1% of this X) and a few row
blocks, never a copy, a boolean mask or a float64 image of X. predict's result (rows ×
outputs) is subtracted.
"""
import tracemalloc

import numpy as np
import pytest

import fastnn

N, D, CLASSES = 100_000, 64, 4
BUDGET = 0.05                     # of X.nbytes


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, D), dtype=np.float32)
    return X, rng.integers(0, CLASSES, N)


def network(backend: str, standardize: bool = False) -> fastnn.Sequential:
    layers = [fastnn.Standardize(D)] if standardize else []
    layers += [fastnn.Dense(D, 32, "relu"), fastnn.Dense(32, CLASSES, "softmax")]
    return fastnn.Sequential(layers, backend=backend, seed=0)


def peak_growth(call) -> int:
    """Bytes by which the traced memory peaked above its level when ``call()`` started."""
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        result = call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak - start - getattr(result, "nbytes", 0)


@pytest.mark.parametrize("backend", ["numba_cpu", "reference"])
def test_fit_needs_no_copy_of_X(data, backend):
    X, y = data
    settings = dict(loss="cross_entropy", epochs=1, batch_size=256, verbose=0)
    network(backend).fit(X[:512], y[:512], **settings)           # compile outside the count
    model = network(backend)
    grown = peak_growth(lambda: model.fit(X, y, **settings))
    limit = BUDGET * X.nbytes
    assert grown <= limit, f"fit grew memory by {grown / X.nbytes:.1%} of X"


@pytest.mark.parametrize("backend", ["numba_cpu", "reference"])
def test_validation_split_and_standardize_grow_memory_by_rows_not_by_X(data, backend):
    """The held-out rows are indices, Standardize adapts on blocks: what fit needs grows by
    the order's 8 bytes a row between N/2 and N rows. (The validation pass keeps buffers for
    its batch of 1024, about 2 MB: O(batch), but more than 5% of this small X by itself.)"""
    X, y = data
    settings = dict(loss="cross_entropy", epochs=1, batch_size=256, verbose=0,
                    validation_split=0.1, standardize=True)
    network(backend, True).fit(X[:512], y[:512], **settings)
    half, full = (peak_growth(lambda: network(backend, True).fit(X[:n], y[:n], **settings))
                  for n in (N // 2, N))
    limit = BUDGET * X[N // 2:].nbytes
    assert full - half <= limit, f"fit grew memory by {(full - half) / X[N // 2:].nbytes:.1%} " \
                                 f"of the rows added"


@pytest.mark.parametrize("call", ["predict", "evaluate"])
def test_predict_and_evaluate_need_no_copy_of_X(data, call):
    X, y = data
    model = network("numba_cpu")
    model.evaluate(X[:10], y[:10], "cross_entropy")
    run = (lambda: model.predict(X)) if call == "predict" else (
        lambda: model.evaluate(X, y, "cross_entropy"))
    grown = peak_growth(run)
    limit = BUDGET * X.nbytes
    assert grown <= limit, f"{call} grew memory by {grown / X.nbytes:.1%} of X"


def test_nan_is_still_found_past_the_first_block(data):
    X = data[0].copy()
    X[-1, 3] = np.nan
    with pytest.raises(ValueError, match=rf"X contains 1 NaN or Inf .* \({N - 1}, 3\)"):
        network("reference").predict(X)
