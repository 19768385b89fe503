"""Dropout's mask, computed element by element from the counter-based hash of
``fastnn.kernels`` (never stored: the backward pass recomputes it)."""
from numba import njit, prange
from numba.extending import register_jitable

from .. import GOLDEN, GRAD_ADD, GRAD_WRITE, MASK32, _mix, dropout_key, dropout_threshold, hash32
from ._split import row_split

# the shared pure-Python definitions, compiled into the kernels that call them
for _function in (hash32, _mix, dropout_key, dropout_threshold):
    register_jitable(inline="always")(_function)


@njit(inline="always", error_model="numpy")
def dropout_rows(X, out, threshold, scale, key, mode, r0, r1, rows):
    """out[r0:r1] = X ⊙ mask · scale (or += with mode GRAD_ADD), the mask of ``key``: element
    (i, j) is kept when hash32(((rᵢ·n + j)·GOLDEN mod 2³²) XOR key) ≥ threshold, with rᵢ =
    rows[i], or i for an empty ``rows``."""
    n = X.shape[1]
    zero, s = X.dtype.type(0), X.dtype.type(scale)
    for i in range(r0, r1):
        r = rows[i] if rows.shape[0] else i
        for j in range(n):
            keep = hash32((((r * n + j) * GOLDEN) & MASK32) ^ key) >= threshold
            v = X[i, j] * s if keep else zero
            out[i, j] = out[i, j] + v if mode == GRAD_ADD else v


@njit(parallel=True, cache=True, error_model="numpy")
def dropout_kernel(X, threshold, scale, key, out, rows, threads):
    """out = X ⊙ mask / (1 − p) over the whole batch, in row chunks."""
    n = X.shape[0]
    q, nchunk = row_split(n, threads, 8 * X.shape[1])     # ≈ 8 integer operations per element
    if nchunk == 1:
        dropout_rows(X, out, threshold, scale, key, GRAD_WRITE, 0, n, rows)
    else:
        for c in prange(nchunk):
            dropout_rows(X, out, threshold, scale, key, GRAD_WRITE, c * q,
                         min(n, c * q + q), rows)
