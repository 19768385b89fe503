"""The cython backend's own AVX-512 float32 matmul (kernels/cython/_kernels.pyx,
``fastnn_sgemm_avx512``) against float64 NumPy, through the kernels that call it: every
layout it serves (forward X·W, dW = Xᵀ·dZ, dX = dZ·Wᵀ) at the edges of its 8×32 blocks, of
its 256-term blocks, of the packed panels of B (a transposed B always; a plain one whose
rows lie far apart: (257, 20) and (600, 600)) and of where it takes over from BLAS (16
columns)."""
import numpy as np
import pytest

from fastnn.backends import available_backends, resolve
from fastnn.kernels import IDENTITY

if not available_backends()["cython"].usable:
    pytest.skip("the cython backend is not built here", allow_module_level=True)

cython = resolve("cython")[1]
from fastnn.kernels.cython import _kernels  # noqa: E402


def test_own_gemm_is_on_where_the_cpu_has_avx512():
    """On an AVX-512 CPU the kernel is on (the other tests then exercise it; elsewhere they
    check the BLAS path)."""
    with open("/proc/cpuinfo") as f:
        avx512 = " avx512f" in f.read()
    assert _kernels.own_gemm() == avx512


@pytest.mark.parametrize("batch", [1, 7, 8, 9, 63, 300])
@pytest.mark.parametrize("n_in, n_out", [(5, 16), (33, 17), (64, 31), (64, 32), (40, 33),
                                         (17, 100), (800, 48), (801, 48), (130, 15),
                                         (257, 20), (600, 600)])
def test_dense_matmuls_match_float64(batch, n_in, n_out):
    rng = np.random.default_rng(batch * 1000 + n_in + n_out)
    X = rng.standard_normal((batch, n_in)).astype(np.float32)
    W = rng.standard_normal((n_in, n_out)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    dA = rng.standard_normal((batch, n_out)).astype(np.float32)
    out = np.empty((batch, n_out), np.float32)
    cython.dense_forward(X, W, b, IDENTITY, out)
    X64, W64, dA64 = X.astype(np.float64), W.astype(np.float64), dA.astype(np.float64)
    tol = {"rtol": 1e-4, "atol": 1e-5 * np.sqrt(n_in)}
    np.testing.assert_allclose(out, X64 @ W64 + b, **tol)
    dX, dW, db = (np.empty_like(X), np.empty_like(W), np.empty_like(b))
    cython.dense_backward(dA.copy(), X, W, out, IDENTITY, dX, dW, db)
    np.testing.assert_allclose(dW, X64.T @ dA64, rtol=1e-4, atol=1e-5 * np.sqrt(batch))
    np.testing.assert_allclose(dX, dA64 @ W64.T, rtol=1e-4, atol=1e-5 * np.sqrt(n_out))
    np.testing.assert_allclose(db, dA64.sum(axis=0), rtol=1e-4, atol=1e-5 * np.sqrt(batch))
