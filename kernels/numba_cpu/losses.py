"""Loss kernels fused with their gradients: one pass over the output rows writes ∂L/∂z."""
import math

from numba import njit, prange

from .. import CROSS_ENTROPY, MSE
from ._exp import exp_neg
from ._split import row_split


@njit(inline="always", error_model="numpy")
def loss_rows(code, Z, labels, Y, dZ, w, inv_mass, r0, r1):
    """Σ over rows r0:r1 of wᵢ × the row's loss (float64) and the rows predicted right (−1
    for mse); writes dZ[r0:r1] = ∂L/∂z with L = Σ wᵢ lᵢ × inv_mass over the batch.

    ``w`` holds the batch's row weights, or is empty for weights 1; ``inv_mass`` is 1/Σ wᵢ
    (1/rows without weights). mse: Z is ŷ, Y the targets. cross-entropy: Z logits, integer
    ``labels``. binary cross-entropy: Z logits, Y in {0, 1}; a row is right when every
    output is.
    """
    dt = Z.dtype.type
    one, zero, half = dt(1), dt(0), dt(0.5)
    weighted = w.shape[0] > 0
    k = Z.shape[1]
    total, right = 0.0, 0
    for i in range(r0, r1):                               # (Z[i, j], not row views: see
        wi = w[i] if weighted else 1.0                    # dense.bias_activate_rows)
        share = dt(wi * inv_mass)                         # this row's share of ∂L
        row = 0.0
        if code == MSE:
            for j in range(k):
                r = Z[i, j] - Y[i, j]                     # residual ŷ − y
                dZ[i, j] = r * share                      # ∂L/∂ŷ = w(ŷ − y)/Σw
                row += half * r * r                       # ½(ŷ − y)²
        elif code == CROSS_ENTROPY:
            m, best = Z[i, 0], 0
            for j in range(1, k):
                if Z[i, j] > m:
                    m, best = Z[i, j], j
            s = zero
            for j in range(k):
                s += exp_neg(Z[i, j] - m)
            lse = m + math.log(s)                         # log Σ e^z, shifted by max z
            for j in range(k):
                dZ[i, j] = exp_neg(Z[i, j] - lse)         # p = softmax(z)
            y = labels[i]
            dZ[i, y] -= one                               # p − onehot(y)
            for j in range(k):
                dZ[i, j] = dZ[i, j] * share
            row = lse - Z[i, y]                           # −log p_y
            right += best == y
        else:
            ok = True
            for j in range(k):
                e = exp_neg(-abs(Z[i, j]))
                p = one / (one + e) if Z[i, j] >= zero else e / (one + e)   # σ(z)
                dZ[i, j] = (p - Y[i, j]) * share          # ∂L/∂z = w(σ(z) − y)/Σw
                row += max(Z[i, j], zero) - Z[i, j] * Y[i, j] + math.log1p(e)
                ok = ok and (Z[i, j] > zero) == (Y[i, j] > half)
            right += ok
        total += wi * row
    return total, (-1 if code == MSE else right)


@njit(inline="always", error_model="numpy")
def inverse_mass(w, n):
    """1/Σ w (0 when the weights sum to 0), or 1/n for an empty w (weights 1)."""
    if w.shape[0] == 0:
        return 1.0 / n
    mass = 0.0
    for i in range(w.shape[0]):
        mass += w[i]
    return 1.0 / mass if mass > 0 else 0.0


@njit(parallel=True, cache=True, error_model="numpy")
def loss_kernel(code, Z, labels, Y, dZ, w, threads):
    """Weighted mean loss over the rows of Z (plain mean for an empty w), writing dZ; large
    batches in parallel row chunks."""
    n = Z.shape[0]
    inv_mass = inverse_mass(w, n)
    q, nchunk = row_split(n, threads, 16 * Z.shape[1])    # ≈ 16 flops per output (exp, log)
    total = 0.0
    if nchunk == 1:
        total = loss_rows(code, Z, labels, Y, dZ, w, inv_mass, 0, n)[0]
    else:
        for c in prange(nchunk):
            total += loss_rows(code, Z, labels, Y, dZ, w, inv_mass, c * q,
                               min(n, c * q + q))[0]
    return total * inv_mass
