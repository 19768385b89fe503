"""The cython backend's own float32 matmul kernels (kernels/cython/_kernels.pyx,
``fastnn_sgemm_small``: AVX-512 8×32 blocks and 16×16 ones for a last panel of at most 16
columns, or AVX2 6×16 blocks where the CPU has AVX2 and FMA only) against float64 NumPy,
through the kernels that call them: every layout they serve (forward X·W, dW = Xᵀ·dZ,
dX = dZ·Wᵀ) at the edges of their row blocks and column panels, of their 256-term blocks,
of the packed panels of B (a transposed B always; a plain one whose rows lie far apart:
(257, 20) and (600, 600)) and of where they take over from BLAS (8 or 16 columns). On an
AVX-512 CPU the AVX2 kernel is checked too, in a child process (FASTNN_OWN_GEMM=avx2)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from fastnn.backends import available_backends, resolve
from fastnn.kernels import IDENTITY

if not available_backends()["cython"].usable:
    pytest.skip("the cython backend is not built here", allow_module_level=True)

cython = resolve("cython")[1]
from fastnn.kernels.cython import _kernels  # noqa: E402


def cpu_flags() -> set[str]:
    """The x86 feature flags of /proc/cpuinfo (none on other architectures)."""
    with open("/proc/cpuinfo") as f:
        return set(next((line for line in f if line.startswith("flags")), "").split())


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="no /proc/cpuinfo here")
def test_own_gemm_runs_the_widest_kernel_the_cpu_has():
    """AVX-512 where the CPU has it, else AVX2 with FMA, else BLAS (the other tests then
    exercise that kernel)."""
    flags = cpu_flags()
    want = ("avx512" if "avx512f" in flags else
            "avx2" if {"avx2", "fma"} <= flags else None)
    choice = os.environ.get("FASTNN_OWN_GEMM", "")
    if choice.startswith("0"):
        want = None
    elif choice == "avx2" and want == "avx512":
        want = "avx2"
    assert _kernels.own_gemm_kernel() == want
    assert _kernels.own_gemm() == (want is not None)


@pytest.mark.skipif(_kernels.own_gemm_kernel() != "avx512" or "FASTNN_OWN_GEMM" in os.environ,
                    reason="the AVX2 kernel is what runs here (or a kernel was chosen)")
def test_the_avx2_kernel_on_an_avx512_cpu():
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             __file__], env=dict(os.environ, FASTNN_OWN_GEMM="avx2"),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


@pytest.mark.parametrize("batch", [1, 7, 8, 9, 63, 300])
@pytest.mark.parametrize("n_in, n_out", [(5, 16), (33, 17), (64, 31), (64, 32), (40, 33),
                                         (64, 7), (100, 8), (9, 10), (200, 15), (70, 24),
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
