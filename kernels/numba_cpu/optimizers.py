"""Optimizer kernels: one parallel pass over the flat parameter buffer, updating in place."""
import numpy as np
from numba import njit, prange

from ._split import BLOCK, PARALLEL_UPDATE_BLOCKS

SGD, MOMENTUM, ADAM = range(3)


@njit(inline="always", error_model="numpy")
def update_range(code, p, g, s1, s2, lo, hi, lr, mu, b1, b2, eps, t):
    """Update p[lo:hi] from g. s1 is the velocity (momentum) or first moment (Adam), s2 the
    second moment; t the 1-based Adam step. Hyperparameters are cast to p's dtype."""
    dt = p.dtype.type
    lr_ = dt(lr)
    if code == SGD:
        for i in range(lo, hi):
            p[i] -= lr_ * g[i]                            # w ← w − η g
    elif code == MOMENTUM:
        mu_ = dt(mu)
        for i in range(lo, hi):
            s1[i] = s1[i] * mu_ + g[i]                    # v ← μv + g
            p[i] -= lr_ * s1[i]                           # w ← w − η v
    else:
        b1_, b2_, c1, c2, eps_ = dt(b1), dt(b2), dt(1 - b1), dt(1 - b2), dt(eps)
        bc1, bc2 = dt(1 - b1 ** t), dt(1 - b2 ** t)
        for i in range(lo, hi):
            s1[i] = s1[i] * b1_ + c1 * g[i]               # m ← β₁m + (1−β₁)g
            s2[i] = s2[i] * b2_ + c2 * g[i] * g[i]        # v ← β₂v + (1−β₂)g²
            p[i] -= lr_ * (s1[i] / bc1) / (np.sqrt(s2[i] / bc2) + eps_)  # w ← w − η m̂/(√v̂+ε)


@njit(parallel=True, cache=True, error_model="numpy")
def update_kernel(code, p, g, s1, s2, lr, mu, b1, b2, eps, t):
    """One optimizer step over all of p, block by block (in parallel for large p)."""
    n = p.shape[0]
    n_blocks = (n + BLOCK - 1) // BLOCK
    if n_blocks < PARALLEL_UPDATE_BLOCKS:
        update_range(code, p, g, s1, s2, 0, n, lr, mu, b1, b2, eps, t)
    else:
        for blk in prange(n_blocks):
            update_range(code, p, g, s1, s2, blk * BLOCK, min(n, blk * BLOCK + BLOCK),
                         lr, mu, b1, b2, eps, t)
