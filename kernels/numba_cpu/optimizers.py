"""Optimizer kernels: one parallel pass over the flat parameter buffer, updating in place."""
import numpy as np
from numba import njit, prange

from .. import MOMENTUM, SGD
from ._split import BLOCK, PARALLEL_UPDATE_BLOCKS


@njit(inline="always", error_model="numpy")
def update_range(code, params, grads, state1, state2, lo, hi, lr, mu, b2, eps, t):
    """Update params[lo:hi] from grads. state1 is the velocity (momentum) or first moment
    (Adam), state2 the second moment; mu the momentum or Adam's β₁; t the 1-based Adam step.
    Hyperparameters are cast to the parameters' dtype. (Loops index views from 0 so Numba can
    drop its negative-index wraparound and vectorise.)"""
    dt = params.dtype.type
    p, g = params[lo:hi], grads[lo:hi]
    lr_ = dt(lr)
    if code == SGD:
        for i in range(p.shape[0]):
            p[i] -= lr_ * g[i]                            # w ← w − η g
    elif code == MOMENTUM:
        v, mu_ = state1[lo:hi], dt(mu)
        for i in range(p.shape[0]):
            v[i] = v[i] * mu_ + g[i]                      # v ← μv + g
            p[i] -= lr_ * v[i]                            # w ← w − η v
    else:
        m, v = state1[lo:hi], state2[lo:hi]
        b1_, b2_, c1, c2, eps_ = dt(mu), dt(b2), dt(1 - mu), dt(1 - b2), dt(eps)
        bc1, bc2 = dt(1 - mu ** t), dt(1 - b2 ** t)
        for i in range(p.shape[0]):
            m[i] = m[i] * b1_ + c1 * g[i]                 # m ← β₁m + (1−β₁)g
            v[i] = v[i] * b2_ + c2 * g[i] * g[i]          # v ← β₂v + (1−β₂)g²
            p[i] -= lr_ * (m[i] / bc1) / (np.sqrt(v[i] / bc2) + eps_)  # w ← w − η m̂/(√v̂+ε)


@njit(parallel=True, cache=True, error_model="numpy")
def update_kernel(code, p, g, s1, s2, lr, mu, b2, eps, t):
    """One optimizer step over all of p, block by block (in parallel for large p)."""
    n = p.shape[0]
    n_blocks = (n + BLOCK - 1) // BLOCK
    if n_blocks < PARALLEL_UPDATE_BLOCKS:
        update_range(code, p, g, s1, s2, 0, n, lr, mu, b2, eps, t)
    else:
        for blk in prange(n_blocks):
            update_range(code, p, g, s1, s2, blk * BLOCK, min(n, blk * BLOCK + BLOCK),
                         lr, mu, b2, eps, t)
