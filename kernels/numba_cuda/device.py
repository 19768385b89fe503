"""Device helpers shared by the CUDA kernels, inlined into every kernel that calls them.

Activations and their derivatives are selected by the integer codes of ``fastnn.kernels`` so
one kernel serves every activation. Scalar maths may run in float64 (Python literals promote
float32 in Numba); results are rounded to the array's dtype when stored.
"""
import math

from numba import cuda

from .. import (ELU, GELU, GELU_TANH, GELU_TANH_C, GELU_TANH_K, LEAKY_RELU, LEAKY_SLOPE, RELU,
                SELU, SELU_ALPHA, SELU_SCALE, SIGMOID, SILU, SOFTMAX, SOFTPLUS,
                SOFTPLUS_THRESHOLD, TANH, hash32)

#: Numba IR-level inlining: the helpers are tiny and called from inner loops
inline = cuda.jit(device=True, inline="always")

SQRT_HALF = math.sqrt(0.5)
INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)

#: Dropout's element hash (fastnn.kernels.hash32, the shared definition, compiled for the
#: device; the keys are computed on the host)
hash32_device = inline(hash32)


@inline
def keeps_preactivation(act):
    """Whether the activation's derivative is computed from z (GELU, SiLU), which the
    forward pass then saves."""
    return act == GELU or act == GELU_TANH or act == SILU


@inline
def sigmoid(z):
    """σ(z) = 1/(1+e^−z) = e^z/(1+e^z); e^−|z| never overflows."""
    e = math.exp(-abs(z))
    if z >= 0:
        return 1.0 / (1.0 + e)
    return e / (1.0 + e)


@inline
def activate(z, act):
    """a = f(z) for an element-wise activation; softmax (a row operation) passes z through."""
    if act == SIGMOID:
        return sigmoid(z)
    if act == TANH:
        return math.tanh(z)
    if act == RELU:
        return z if z > 0 else 0.0                         # a = max(0, z)
    if act == LEAKY_RELU:
        return z if z > 0 else LEAKY_SLOPE * z             # a = z or 0.01 z
    if act == ELU:
        return z if z > 0 else math.expm1(min(z, 0.0))     # a = z or e^z − 1
    if act == SELU:                                        # a = λz or λα(e^z − 1)
        return SELU_SCALE * z if z > 0 else SELU_SCALE * SELU_ALPHA * math.expm1(min(z, 0.0))
    if act == SOFTPLUS:                                    # a = log(1 + e^z), z above 20
        return z if z > SOFTPLUS_THRESHOLD else math.log1p(math.exp(z))
    if act == GELU:                                        # a = z Φ(z)
        return 0.5 * z * (1.0 + math.erf(z * SQRT_HALF))
    if act == GELU_TANH:                                   # a = ½z(1 + tanh(c(z + k z³)))
        return 0.5 * z * (1.0 + math.tanh(GELU_TANH_C * (z + GELU_TANH_K * z * z * z)))
    if act == SILU:
        return z * sigmoid(z)                              # a = z σ(z)
    return z


@inline
def activation_grad(dA, a, act, row_dot):
    """dZ = dA ⊙ f′(z) from the saved output a = f(z), or for GELU and SiLU from the saved
    pre-activation, passed as ``a``.

    ``row_dot`` is Σ_k a_k dA_k over the sample's row, needed only by softmax.
    """
    if act == GELU:                                        # Φ(z) + z φ(z), a = z
        return dA * (0.5 * (1.0 + math.erf(a * SQRT_HALF))
                     + a * INV_SQRT_2PI * math.exp(-0.5 * a * a))
    if act == GELU_TANH:                                   # ½(1 + t) + ½z(1 − t²) c(1 + 3k z²)
        t = math.tanh(GELU_TANH_C * (a + GELU_TANH_K * a * a * a))
        return dA * (0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * GELU_TANH_C
                     * (1.0 + 3.0 * GELU_TANH_K * a * a))
    if act == SILU:                                        # σ(z)(1 + z(1 − σ(z)))
        s = sigmoid(a)
        return dA * s * (1.0 + a * (1.0 - s))
    if act == SIGMOID:
        return dA * a * (1.0 - a)                          # σ′ = a(1 − a)
    if act == TANH:
        return dA * (1.0 - a * a)                          # tanh′ = 1 − a²
    if act == RELU:
        return dA if a > 0 else 0.0                        # ReLU′ = [a > 0]
    if act == LEAKY_RELU:
        return dA if a > 0 else LEAKY_SLOPE * dA           # leaky′ = 1 or 0.01
    if act == ELU:
        return dA if a > 0 else dA * (a + 1.0)             # ELU′ = 1 or a + 1
    if act == SELU:                                        # SELU′ = λ or a + λα
        return dA * SELU_SCALE if a > 0 else dA * (a + SELU_SCALE * SELU_ALPHA)
    if act == SOFTPLUS:                                    # σ(z) = 1 − e^−a, 1 above 20
        return dA if a > SOFTPLUS_THRESHOLD else -dA * math.expm1(-a)
    if act == SOFTMAX:
        return a * (dA - row_dot)                          # a_j(dA_j − Σ_k a_k dA_k)
    return dA


@inline
def sum_over_y(scratch, value):
    """Sum ``value`` over threadIdx.y for each threadIdx.x; every thread gets its column's total.

    ``scratch`` is a shared (blockDim.y, blockDim.x) float64 array; blockDim.y must be a power
    of two. A fixed tree order makes the sum deterministic (no atomics). Every thread of the
    block must call this (it synchronises).
    """
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    scratch[ty, tx] = value
    cuda.syncthreads()
    step = cuda.blockDim.y // 2
    while step > 0:
        if ty < step:
            scratch[ty, tx] += scratch[ty + step, tx]
        cuda.syncthreads()
        step //= 2
    total = scratch[0, tx]
    cuda.syncthreads()                                     # scratch may be reused next
    return total


@inline
def accumulate_totals(scratch, totals, loss, n_right):
    """totals[0] += Σ loss, totals[1] += Σ n_right over a one-block (1, threads) launch."""
    loss = sum_over_y(scratch, loss)
    n_right = sum_over_y(scratch, n_right)
    if cuda.threadIdx.y == 0:
        totals[0] += loss
        totals[1] += n_right


@inline
def load_tile(src, transposed, r0, c0, tile, rows, cols, thread, n_threads):
    """tile[i, j] = S[r0 + i, c0 + j] for the rows × cols block at (r0, c0) of S, where
    S = srcᵀ if ``transposed`` else src; entries outside S are 0 (edge tiles).

    Thread ``thread`` of ``n_threads`` (which divides rows × cols) loads every n_threads-th
    element, counting along src's contiguous axis so that neighbouring threads read
    neighbouring addresses (coalesced loads).
    """
    if transposed:
        n_rows, n_cols = src.shape[1], src.shape[0]
    else:
        n_rows, n_cols = src.shape[0], src.shape[1]
    for step in range(rows * cols // n_threads):
        e = thread + step * n_threads
        if transposed:                                     # S[i, j] = src[j, i]: i fastest
            i, j = e % rows, e // rows
        else:                                              # S[i, j] = src[i, j]: j fastest
            i, j = e // cols, e % cols
        r, c = r0 + i, c0 + j
        if r < n_rows and c < n_cols:
            tile[i, j] = src[c, r] if transposed else src[r, c]
        else:
            tile[i, j] = 0
