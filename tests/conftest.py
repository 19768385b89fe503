"""Shared fixtures: the backends under test, the size of generated cases, and the tolerances
of DESIGN.md."""
import os
import sys

import numpy as np
import pytest

from fastnn.backends import available_backends, resolve

#: every usable compiled backend; each is checked against the NumPy reference
COMPILED_BACKENDS = [name for name, info in available_backends().items()
                     if info.usable and name != "reference"]


#: bounds of the generated kernel cases; tests/test_numba_cuda.py lowers them to run the same
#: suite under the CUDA simulator, which executes every GPU thread in Python
MAX_BATCH = int(os.environ.get("FASTNN_TEST_MAX_BATCH", 257))
MAX_WIDTH = int(os.environ.get("FASTNN_TEST_MAX_WIDTH", 300))
EXAMPLES = int(os.environ.get("FASTNN_TEST_EXAMPLES", 20))

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    # The simulator runs each GPU thread as a Python thread, and a block's manager thread polls
    # them without sleeping: with the GIL handed on every 1 ms instead of 5 ms, the threads it
    # waits on run sooner (tests/numba_cuda_checks.py: 310 -> 248 s on 2 cores, 2026-12-02).
    sys.setswitchinterval(0.001)
    # ...which makes a race in the simulator's shared arrays likely: see cudasim_shared.py
    from cudasim_shared import install as install_thread_safe_shared_arrays

    install_thread_safe_shared_arrays()


@pytest.fixture(scope="session")
def reference():
    return resolve("reference")[1]


def tolerance(dtype, reduction: int = 1) -> dict:
    """assert_allclose tolerances for a compiled result vs the reference (DESIGN.md):
    float32 rtol 1e-4 / atol 1e-5, float64 1e-10, atol scaled by √(reduction length)."""
    scale = max(1.0, float(np.sqrt(reduction)))
    if np.dtype(dtype) == np.float32:
        return {"rtol": 1e-4, "atol": 1e-5 * scale}
    return {"rtol": 1e-10, "atol": 1e-10 * scale}


def layout(a: np.ndarray, kind: str) -> np.ndarray:
    """The same values in another memory layout: "C", "F" (Fortran) or "strided" (a view
    with a column step of 2 into a larger array)."""
    if kind == "C":
        return np.ascontiguousarray(a)
    if kind == "F":
        return np.asfortranarray(a)
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    wide[..., ::2] = a
    return wide[..., ::2]


def check_trainer_gradients(backend: str, layers, dtype, batch: int, rows: int,
                            loss: str = "cross_entropy") -> None:
    """A fused trainer's ``gradients`` (a rank's share of a distributed step: ``rows`` rows of
    a global minibatch of ``batch``, weighted, Dropout masks of their places in it) equals the
    reference's layer path with the same masks, scaled from the rows' weight to the step's
    global weight; nothing is trained."""
    import copy

    from fastnn import Dropout, Sequential, SGD, losses
    from fastnn.layers import layers_of

    rng = np.random.default_rng(7)
    n_in, k = layers[0].in_features, layers[-1].out_features
    X = rng.standard_normal((3 * batch, n_in))
    y = rng.integers(0, k, len(X)) if loss == "cross_entropy" else rng.standard_normal(
        (len(X), k))
    w = rng.uniform(0.5, 2.0, len(X))
    idx = rng.choice(len(X), rows, replace=False)
    places = np.sort(rng.choice(batch, rows, replace=False))
    mass = w[idx].sum() + 3.5                        # other ranks' rows weigh 3.5
    model = Sequential(copy.deepcopy(layers), backend=backend, seed=5, dtype=dtype)
    ref = Sequential(copy.deepcopy(layers), backend="reference", seed=5, dtype=dtype)
    Xp, yp, lossp = model._prepare(X, y, loss)
    trainer = model._make_trainer(lossp, SGD(0.1), batch)
    trainer.prepare(Xp, yp)
    before = model._params.copy(), int(model._steps[0])
    total, right = trainer.gradients(Xp, yp, idx, w, places, mass)
    for layer in layers_of(ref.layers, Dropout):
        layer._rows = places
    Xr, yr, lr = ref._prepare(X[idx], y[idx], loss)
    value, out = ref._loss_and_gradients(Xr, yr, lr, w[idx], w[idx].sum() / mass)
    np.testing.assert_allclose(model._grads, ref._grads, **tolerance(dtype, rows))
    np.testing.assert_allclose(total, value * w[idx].sum(), **tolerance(dtype, rows))
    assert right == losses.get(loss).n_correct(out, yr, probabilities=False)
    assert np.array_equal(model._params, before[0]) and int(model._steps[0]) == before[1]
