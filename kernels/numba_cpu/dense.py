"""Dense layer kernels: single-threaded BLAS per row chunk, bias and activation fused after it.

Each thread owns a chunk of rows. Forward: z = X[chunk] @ W through BLAS, then bias and
activation over the chunk while it is still in cache. Backward: dZ from the saved output, then
dX = dZ Wᵀ for the chunk; dW = Xᵀ dZ and db = Σ dZ reduce over the whole batch.

BLAS is called from inside the parallel region, so it must run single-threaded there
(:func:`fastnn.set_num_threads` pins it): Numba's threads and BLAS's never stack.

Why BLAS (or, for float32 on AVX-512 and AVX2 CPUs, fastnn's own kernel: ``_own_gemm.py``) at every
size: single-threaded sgemm called from Numba (``np.dot`` with ``out``) costs
about 50 ns per call, and beat our own loops at every shape measured, from (batch, in, out) =
(16, 8, 8) (0.08 µs vs 0.38 µs) through (32, 32, 64) (1.1 µs vs 2.6 µs for a 2-row × 4-k
register-blocked loop) to (128, 784, 256) (400 µs vs 740 µs); own loops only tie below ~100
multiply-adds, where nothing is at stake. Our loops do what BLAS cannot fuse: the epilogues.
"""
import math

import numpy as np
from numba import njit, prange

from .. import (ELU, GELU, GELU_TANH, GELU_TANH_C, GELU_TANH_K, LEAKY_RELU, LEAKY_SLOPE, RELU,
                SELU, SELU_ALPHA, SELU_SCALE, SIGMOID, SILU, SOFTMAX, SOFTPLUS,
                SOFTPLUS_THRESHOLD, TANH)
from ._exp import exp_neg
from ._own_gemm import matmul
from ._split import row_split

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


@njit(inline="always", error_model="numpy")
def _preactivation_grad(v, act):
    """f′(z) of the activations that need z: GELU Φ(z) + zφ(z), its tanh form, SiLU
    σ(z)(1 + z(1 − σ(z)))."""
    if act == GELU:
        return 0.5 * (1.0 + math.erf(v * _SQRT_HALF)) + v * _INV_SQRT_2PI * math.exp(-0.5 * v * v)
    if act == GELU_TANH:
        t = math.tanh(GELU_TANH_C * (v + GELU_TANH_K * v * v * v))
        return 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * GELU_TANH_C * (
            1.0 + 3.0 * GELU_TANH_K * v * v)
    e = math.exp(-abs(v))
    s = 1.0 / (1.0 + e) if v >= 0 else e / (1.0 + e)
    return s * (1.0 + v * (1.0 - s))


@njit(inline="always", error_model="numpy")
def bias_activate_rows(Z, b, act, r0, r1, Zs):
    """Z[r0:r1] = f(Z[r0:r1] + b) in place, one row at a time; for GELU and SiLU, Zs[r0:r1]
    receives z = Z + b (Zs is not touched for the other activations).

    (Row helpers index Z[i, j] rather than taking row views: inside the big trainer kernel
    Numba could not prune a view's reference counting, and those atomic increments took 17%
    of a small network's step.)
    """
    one, zero = Z.dtype.type(1), Z.dtype.type(0)
    slope = Z.dtype.type(LEAKY_SLOPE)
    lam, lam_alpha = Z.dtype.type(SELU_SCALE), Z.dtype.type(SELU_SCALE * SELU_ALPHA)
    cut = Z.dtype.type(SOFTPLUS_THRESHOLD)
    n = Z.shape[1]
    for i in range(r0, r1):
        if act == SIGMOID:
            for j in range(n):
                v = Z[i, j] + b[j]
                e = exp_neg(-abs(v))                      # σ = 1/(1+e^−v) = e^v/(1+e^v)
                Z[i, j] = one / (one + e) if v >= zero else e / (one + e)
        elif act == TANH:
            for j in range(n):
                Z[i, j] = math.tanh(Z[i, j] + b[j])
        elif act == RELU:
            for j in range(n):
                v = Z[i, j] + b[j]
                Z[i, j] = max(v, zero)         # keeps NaN, like np.maximum
        elif act == LEAKY_RELU:
            for j in range(n):
                v = Z[i, j] + b[j]
                Z[i, j] = v * (one if v > zero else slope)
        elif act == ELU:
            for j in range(n):
                v = Z[i, j] + b[j]
                Z[i, j] = v if v > zero else math.expm1(min(v, zero))   # z or e^z − 1
        elif act == SELU:
            for j in range(n):
                v = Z[i, j] + b[j]
                Z[i, j] = lam * v if v > zero else lam_alpha * math.expm1(min(v, zero))
        elif act == SOFTPLUS:
            for j in range(n):
                v = Z[i, j] + b[j]                        # log(1 + e^z), z above 20
                Z[i, j] = v if v > cut else math.log1p(math.exp(v))
        elif act == GELU:
            for j in range(n):
                v = Z[i, j] + b[j]
                Zs[i, j] = v                              # a = z Φ(z)
                Z[i, j] = 0.5 * v * (1.0 + math.erf(v * _SQRT_HALF))
        elif act == GELU_TANH:
            for j in range(n):
                v = Z[i, j] + b[j]
                Zs[i, j] = v                              # a = ½z(1 + tanh(c(z + k z³)))
                Z[i, j] = 0.5 * v * (1.0 + math.tanh(GELU_TANH_C * (v + GELU_TANH_K * v * v * v)))
        elif act == SILU:
            for j in range(n):
                v = Z[i, j] + b[j]
                Zs[i, j] = v
                e = exp_neg(-abs(v))                      # a = z σ(z)
                Z[i, j] = v * (one / (one + e) if v >= zero else e / (one + e))
        elif act == SOFTMAX:
            m = Z[i, 0] + b[0]
            for j in range(n):
                Z[i, j] += b[j]
                m = max(m, Z[i, j])
            s = zero
            for j in range(n):
                Z[i, j] = exp_neg(Z[i, j] - m)            # e^(z − max z)
                s += Z[i, j]
            for j in range(n):
                Z[i, j] = Z[i, j] / s
        else:
            for j in range(n):
                Z[i, j] += b[j]


@njit(inline="always", error_model="numpy")
def activation_grad_rows(dA, A, act, r0, r1, Zs):
    """dA[r0:r1] ← dA ⊙ f′, f′ from the saved output a (σ′ = a(1−a), tanh′ = 1−a², …), or
    for GELU and SiLU from the saved pre-activation Zs."""
    one, zero = dA.dtype.type(1), dA.dtype.type(0)
    slope = dA.dtype.type(LEAKY_SLOPE)
    lam, lam_alpha = dA.dtype.type(SELU_SCALE), dA.dtype.type(SELU_SCALE * SELU_ALPHA)
    cut = dA.dtype.type(SOFTPLUS_THRESHOLD)
    n = dA.shape[1]
    for i in range(r0, r1):
        if act == SIGMOID:
            for j in range(n):
                dA[i, j] = dA[i, j] * A[i, j] * (one - A[i, j])
        elif act == TANH:
            for j in range(n):
                dA[i, j] = dA[i, j] * (one - A[i, j] * A[i, j])
        elif act == RELU:
            for j in range(n):
                dA[i, j] = dA[i, j] * (one if A[i, j] > zero else zero)
        elif act == LEAKY_RELU:
            for j in range(n):
                dA[i, j] = dA[i, j] * (one if A[i, j] > zero else slope)
        elif act == ELU:
            for j in range(n):                            # ELU′ = 1 or a + 1
                dA[i, j] = dA[i, j] * (one if A[i, j] > zero else A[i, j] + one)
        elif act == SELU:
            for j in range(n):                            # SELU′ = λ or a + λα
                dA[i, j] = dA[i, j] * (lam if A[i, j] > zero else A[i, j] + lam_alpha)
        elif act == SOFTPLUS:
            for j in range(n):                            # σ(z) = 1 − e^−a, 1 above 20
                dA[i, j] = dA[i, j] * (one if A[i, j] > cut else -math.expm1(-A[i, j]))
        elif act == GELU or act == GELU_TANH or act == SILU:
            for j in range(n):
                dA[i, j] = dA[i, j] * _preactivation_grad(Zs[i, j], act)
        elif act == SOFTMAX:                              # ∂L/∂z_j = a_j(∂L/∂a_j − Σ a_k ∂L/∂a_k)
            s = zero
            for j in range(n):
                s += dA[i, j] * A[i, j]
            for j in range(n):
                dA[i, j] = A[i, j] * (dA[i, j] - s)


@njit(inline="always", error_model="numpy")
def column_sums(dZ, r0, r1, db):
    """db = Σ_{i in r0:r1} dZ[i] (the bias gradient of a row chunk). (Loops only: in a
    parallel=True kernel an array expression such as ``db[:] = 0`` becomes a parallel region
    of its own, ≈ 25 µs.)"""
    for j in range(db.shape[0]):
        db[j] = 0
    for i in range(r0, r1):
        for j in range(db.shape[0]):
            db[j] += dZ[i, j]


@njit(inline="always", error_model="numpy")
def dense_forward_rows(X, W, b, act, out, r0, r1, Zs, own):
    """out[r0:r1] = f(X[r0:r1] @ W + b) (and Zs[r0:r1] = z for GELU and SiLU); ``own``: the
    matmul may run on fastnn's kernel (``_own_gemm.py``)."""
    matmul(X[r0:r1], W, out[r0:r1], False, False, own)
    bias_activate_rows(out, b, act, r0, r1, Zs)


@njit(parallel=True, cache=True, error_model="numpy")
def dense_forward_kernel(X, W, b, act, out, Zs, threads):
    n = X.shape[0]
    q, nchunk = row_split(n, threads, W.shape[0] * W.shape[1])
    if nchunk == 1:                                       # too little work to share
        dense_forward_rows(X, W, b, act, out, 0, n, Zs, False)
    else:
        for c in prange(nchunk):
            dense_forward_rows(X, W, b, act, out, c * q, min(n, c * q + q), Zs, False)


@njit(inline="always", error_model="numpy")
def dense_backward_rows(dA, W, A, act, dX, has_dX, r0, r1, Zs):
    """dZ = dA ⊙ f′ in place for rows r0:r1, and their dX = dZ Wᵀ."""
    activation_grad_rows(dA, A, act, r0, r1, Zs)          # dZ = ∂L/∂a ⊙ f′(z)
    if has_dX:
        np.dot(dA[r0:r1], W.T, dX[r0:r1])                 # ∂L/∂x = dZ Wᵀ


@njit(parallel=True, cache=True, error_model="numpy")
def dense_backward_kernel(dA, X, W, A, act, dX, has_dX, dW, db, Zs, threads):
    n = X.shape[0]
    q, nchunk = row_split(n, threads, W.shape[0] * W.shape[1])
    if nchunk == 1:
        dense_backward_rows(dA, W, A, act, dX, has_dX, 0, n, Zs)
    else:
        for c in prange(nchunk):
            dense_backward_rows(dA, W, A, act, dX, has_dX, c * q, min(n, c * q + q), Zs)
    np.dot(X.T, dA, dW)                                   # ∂L/∂W = Xᵀ dZ
    column_sums(dA, 0, n, db)                             # ∂L/∂b = Σ_batch dZ
