"""Every compiled backend against the NumPy reference, kernel by kernel.

Parametrised over every usable backend of the registry, so a backend added there is tested
here automatically. Cases are drawn by hypothesis: batch 1..257, widths 1..300 (odd and prime
sizes included), every activation and loss, float32 and float64, and inputs in C, Fortran and
strided layouts. tests/test_numba_cuda.py runs this same suite on numba_cuda under the CUDA
simulator with smaller bounds (conftest's FASTNN_TEST_* variables).
"""
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import COMPILED_BACKENDS, EXAMPLES, MAX_BATCH, MAX_WIDTH, layout, tolerance
from fastnn.backends import resolve
from fastnn.kernels import ACTIVATIONS, INTERFACE, NEEDS_PREACTIVATION, dropout_key, hash32

pytestmark = pytest.mark.skipif(not COMPILED_BACKENDS, reason="no compiled backend is usable")

# the backend fixture is a module, the same for every generated case: nothing to reset
CASES = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])
dtypes = st.sampled_from([np.float32, np.float64])
layouts = st.sampled_from(["C", "F", "strided"])
batches = st.one_of(st.just(1), st.integers(1, MAX_BATCH))
widths = st.one_of(st.sampled_from([w for w in (1, 2, 7, 31, 97, 257) if w <= MAX_WIDTH]),
                   st.integers(1, MAX_WIDTH))


@pytest.fixture(params=COMPILED_BACKENDS)
def backend(request):
    return resolve(request.param)[1]


def rand(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def test_backend_defines_the_whole_interface(backend):
    assert [f for f in INTERFACE if not callable(getattr(backend, f, None))] == []


@CASES
@given(batch=batches, n_in=widths, n_out=widths, act=st.sampled_from(sorted(ACTIVATIONS)),
       dtype=dtypes, kind=layouts, seed=st.integers(0, 2**16))
def test_dense_forward(backend, reference, batch, n_in, n_out, act, dtype, kind, seed):
    rng = np.random.default_rng(seed)
    X = rand(rng, (batch, n_in), dtype)
    W = rand(rng, (n_in, n_out), dtype, 1 / np.sqrt(n_in))
    b = rand(rng, n_out, dtype)
    keeps_z = ACTIVATIONS[act] in NEEDS_PREACTIVATION
    expected, z_want = np.empty((batch, n_out), dtype), np.empty((batch, n_out), dtype)
    reference.dense_forward(X, W, b, ACTIVATIONS[act], expected, z_want)
    out, z_got = np.full((batch, n_out), np.nan, dtype), np.full((batch, n_out), np.nan, dtype)
    backend.dense_forward(layout(X, kind), layout(W, kind), b, ACTIVATIONS[act], out, z_got)
    np.testing.assert_allclose(out, expected, **tolerance(dtype, n_in))
    if keeps_z:                                          # z is kept for GELU and SiLU only
        np.testing.assert_allclose(z_got, z_want, **tolerance(dtype, n_in))
    else:
        assert np.isnan(z_got).all()


@pytest.mark.parametrize("act", sorted(ACTIVATIONS[a] for a in ("gelu", "gelu_tanh", "silu")))
def test_activations_that_need_z_refuse_to_run_without_it(backend, act):
    X, W, b = np.ones((2, 3)), np.ones((3, 2)), np.zeros(2)
    with pytest.raises(ValueError, match="pre-activation"):
        backend.dense_forward(X, W, b, act, np.empty((2, 2)))
    with pytest.raises(ValueError, match="pre-activation"):
        backend.dense_backward(np.ones((2, 2)), X, W, np.ones((2, 2)), act, None,
                               np.empty((3, 2)), np.empty(2))


@CASES
@given(batch=batches, n_in=widths, n_out=widths, act=st.sampled_from(sorted(ACTIVATIONS)),
       dtype=dtypes, kind=layouts, first_layer=st.booleans(), seed=st.integers(0, 2**16))
def test_dense_backward(backend, reference, batch, n_in, n_out, act, dtype, kind, first_layer,
                        seed):
    rng = np.random.default_rng(seed)
    X = rand(rng, (batch, n_in), dtype)
    W = rand(rng, (n_in, n_out), dtype, 1 / np.sqrt(n_in))
    A, Z = np.empty((batch, n_out), dtype), np.empty((batch, n_out), dtype)
    reference.dense_forward(X, W, rand(rng, n_out, dtype), ACTIVATIONS[act], A, Z)
    dA = rand(rng, (batch, n_out), dtype)

    def run(kernels, kind):
        dZ = layout(dA.copy(), kind) if kind != "C" else dA.copy()
        dX = None if first_layer else np.full((batch, n_in), np.nan, dtype)
        dW = np.full((n_in, n_out), np.nan, dtype)
        db = np.full(n_out, np.nan, dtype)
        kernels.dense_backward(dZ, layout(X, kind), layout(W, kind), layout(A, kind),
                               ACTIVATIONS[act], dX, dW, db, layout(Z, kind))
        return dZ, dX, dW, db

    want = run(reference, "C")
    got = run(backend, kind)
    for name, g, w, k in zip(("dZ", "dX", "dW", "db"), got, want, (n_out, n_out, batch, batch)):
        if w is not None:
            np.testing.assert_allclose(g, w, err_msg=name, **tolerance(dtype, k))


@CASES
@given(batch=batches, n_out=st.integers(1, MAX_WIDTH), dtype=dtypes, seed=st.integers(0, 2**16),
       scale=st.sampled_from([1.0, 30.0]), weighting=st.sampled_from(["none", "random", "zeros"]))
def test_losses(backend, reference, batch, n_out, dtype, seed, scale, weighting):
    rng = np.random.default_rng(seed)
    Z = rand(rng, (batch, n_out), dtype, scale)
    weights = {"none": None, "random": rng.uniform(0, 3, batch) * (rng.random(batch) < 0.8),
               "zeros": np.zeros(batch)}[weighting]
    targets = {
        "mse": rand(rng, (batch, n_out), dtype),
        "sigmoid_binary_cross_entropy": rng.integers(0, 2, (batch, n_out)).astype(dtype),
        "softmax_cross_entropy": rng.integers(0, n_out, batch).astype(np.int64),
    }
    for kernel, y in targets.items():
        dZ_want, dZ_got = np.empty_like(Z), np.full_like(Z, np.nan)
        want = getattr(reference, kernel)(Z, y, dZ_want, weights)
        got = getattr(backend, kernel)(Z.copy(), y, dZ_got, weights)
        tol = tolerance(dtype, batch * n_out)
        assert isinstance(got, float)
        np.testing.assert_allclose(got, want, err_msg=kernel, rtol=tol["rtol"] * 10,
                                   atol=tol["atol"])
        np.testing.assert_allclose(dZ_got, dZ_want, err_msg=kernel, **tolerance(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_losses_stay_finite_for_huge_logits(backend, reference, dtype):
    Z = np.array([[250.0, -250.0], [-1000.0, 1000.0], [0.0, 120.0]], dtype)
    labels = np.array([0, 0, 1])
    bits = np.array([[1, 0], [1, 1], [0, 1]], dtype)
    for kernel, y in (("softmax_cross_entropy", labels), ("sigmoid_binary_cross_entropy", bits)):
        dZ_want, dZ_got = np.empty_like(Z), np.empty_like(Z)
        want = getattr(reference, kernel)(Z, y, dZ_want)
        got = getattr(backend, kernel)(Z, y, dZ_got)
        assert np.isfinite(got) and np.isfinite(dZ_got).all()
        np.testing.assert_allclose(got, want, rtol=1e-6)
        np.testing.assert_allclose(dZ_got, dZ_want, **tolerance(dtype))


@CASES
@given(n=st.integers(1, 5000 * MAX_WIDTH // 300), dtype=dtypes, seed=st.integers(0, 2**16))
def test_optimizers(backend, reference, n, dtype, seed):
    rng = np.random.default_rng(seed)
    p0 = rand(rng, n, dtype)
    grads = [rand(rng, n, dtype) for _ in range(3)]

    def run(kernels, name):
        p, s1, s2 = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
        for t, g in enumerate(grads, start=1):
            OPTIMIZER_CASES[name](kernels, p, g, s1, s2, t)
        return p, s1, s2

    for name in OPTIMIZER_CASES:
        for got, want in zip(run(backend, name), run(reference, name)):
            np.testing.assert_allclose(got, want, err_msg=name, **tolerance(dtype))


#: every optimizer kernel, and its options, as a call on (params, grads, state 1, state 2, t)
OPTIMIZER_CASES = {
    "sgd": lambda k, p, g, s1, s2, t: k.sgd(p, g, 0.1),
    "sgd_weight_decay": lambda k, p, g, s1, s2, t: k.sgd(p, g, 0.1, 0.01),
    "sgd_momentum": lambda k, p, g, s1, s2, t: k.sgd_momentum(p, g, s1, 0.1, 0.9),
    "nesterov_weight_decay": lambda k, p, g, s1, s2, t: k.sgd_momentum(p, g, s1, 0.1, 0.9,
                                                                       True, 0.01),
    "adam": lambda k, p, g, s1, s2, t: k.adam(p, g, s1, s2, 1e-2, 0.9, 0.999, 1e-8, t),
    "adam_weight_decay": lambda k, p, g, s1, s2, t: k.adam(p, g, s1, s2, 1e-2, 0.9, 0.999,
                                                           1e-8, t, 0.01),
    "adamw": lambda k, p, g, s1, s2, t: k.adamw(p, g, s1, s2, 1e-2, 0.9, 0.999, 1e-8, t, 0.1),
    "rmsprop": lambda k, p, g, s1, s2, t: k.rmsprop(p, g, s1, None, 1e-2, 0.99, 1e-8),
    "rmsprop_momentum": lambda k, p, g, s1, s2, t: k.rmsprop(p, g, s1, s2, 1e-2, 0.9, 1e-8,
                                                             0.8, 0.01),
}


@CASES
@given(batch=st.integers(1, MAX_BATCH), n=widths, dtype=dtypes, training=st.booleans(), kind=layouts,
       seed=st.integers(0, 2**16))
def test_batchnorm(backend, reference, batch, n, dtype, training, kind, seed):
    rng = np.random.default_rng(seed)
    X = rand(rng, (batch, n), dtype, 3.0) + 1
    gamma, beta = rand(rng, n, dtype), rand(rng, n, dtype)
    dY = rand(rng, (batch, n), dtype)

    def run(kernels, kind):
        rm, rv = rand(np.random.default_rng(1), n, dtype), np.ones(n, dtype)
        out, xhat = np.empty((batch, n), dtype), np.empty((batch, n), dtype)
        inv_std, dX = np.empty(n, dtype), np.empty((batch, n), dtype)
        dgamma, dbeta = np.empty(n, dtype), np.empty(n, dtype)
        kernels.batchnorm_forward(layout(X, kind), gamma, beta, rm, rv, 0.1, 1e-5, training,
                                  out, xhat, inv_std)
        kernels.batchnorm_backward(layout(dY, kind), xhat, inv_std, gamma, dX, dgamma, dbeta)
        return out, xhat, inv_std, rm, rv, dX, dgamma, dbeta

    names = ("out", "xhat", "inv_std", "running_mean", "running_var", "dX", "dgamma", "dbeta")
    for name, got, want in zip(names, run(backend, kind), run(reference, "C")):
        np.testing.assert_allclose(got, want, err_msg=name, **tolerance(dtype, batch))


@CASES
@given(batch=batches, n=widths, p=st.sampled_from([0.0, 0.1, 0.5, 0.9]), dtype=dtypes,
       kind=layouts, key=st.integers(0, 2**32 - 1))
def test_dropout(backend, reference, batch, n, p, dtype, kind, key):
    X = rand(np.random.default_rng(key % 1000), (batch, n), dtype)
    want, got = np.empty_like(X), np.full_like(X, np.nan)
    reference.dropout(X, p, key, want)
    backend.dropout(layout(X, kind), p, key, got)
    # the same counter-based mask on every backend, not just the same statistics
    np.testing.assert_array_equal(got == 0, want == 0)
    np.testing.assert_allclose(got, want, **tolerance(dtype))


def test_dropout_keeps_one_minus_p_and_preserves_the_mean(backend):
    """On a large batch the kept fraction is within 4σ of 1 − p (σ of a binomial) and the
    output's mean is the input's."""
    rows, n, p = 1000, 500, 0.3
    X = np.ones((rows, n))
    out = np.empty_like(X)
    backend.dropout(X, p, dropout_key(0, 0, 0), out)
    kept = (out != 0).mean()
    sigma = np.sqrt(p * (1 - p) / X.size)
    assert abs(kept - (1 - p)) < 4 * sigma
    assert abs(out.mean() - 1) < 4 * sigma / (1 - p)
    np.testing.assert_allclose(out[out != 0], 1 / (1 - p))


def lowbias32(x: int) -> int:
    """C. Wellons' lowbias32, written from its definition in exact Python integers."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) % 2**32
    x ^= x >> 15
    x = (x * 0x846CA68B) % 2**32
    return x ^ (x >> 16)


def test_dropout_hash_is_lowbias32_in_every_integer_kind():
    """Python ints, NumPy uint64 arrays (the reference) and int64 scalars (compiled and
    simulated GPU code) all give lowbias32, and no product overflows."""
    xs = np.random.default_rng(5).integers(0, 2**32, 4000, dtype=np.uint64)
    xs[:3] = 0, 1, 2**32 - 1
    want = [lowbias32(int(x)) for x in xs]
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # an int64 overflow warns
        assert [hash32(int(x)) for x in xs] == want
        assert hash32(xs).tolist() == want
        assert [int(hash32(np.int64(x))) for x in xs] == want


def test_dropout_rows_draw_the_masks_of_their_places_in_the_minibatch(backend, reference):
    """A process holding rows 1, 4 and 6 of a minibatch draws exactly the masks those rows
    get when the whole minibatch is dropped out at once."""
    rng = np.random.default_rng(11)
    X = rng.standard_normal((8, 37))
    whole = np.empty_like(X)
    reference.dropout(X, 0.4, 2024, whole)
    rows = np.array([1, 4, 6])
    part = np.full((3, 37), np.nan)
    backend.dropout(X[rows], 0.4, 2024, part, rows)
    np.testing.assert_allclose(part, whole[rows], rtol=1e-12)
