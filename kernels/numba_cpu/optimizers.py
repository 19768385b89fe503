"""Optimizer kernels: one parallel pass over the flat parameter buffer, updating in place."""
import numpy as np
from numba import njit, prange

from .. import (ADAM, ADAMW, BETA2, LR, MOMENTUM, MU_OR_BETA1, NESTEROV, OPT_EPS, RMSPROP, SGD,
                WEIGHT_DECAY)
from ._split import BLOCK, PARALLEL_UPDATE_BLOCKS


@njit(inline="always", error_model="numpy")
def update_range(code, params, grads, state1, state2, lo, hi, hyper, t):
    """Update params[lo:hi] from grads by the rule ``code`` with ``hyper`` (the plan's: lr,
    momentum or β₁, β₂ or RMSprop's α, ε, weight decay λ, Nesterov) at the 1-based step t.
    state1: the velocity (momentum), first moment (Adam) or mean square (RMSprop); state2:
    the second moment (Adam) or RMSprop's velocity. Formulas: fastnn.kernels.reference.
    Hyper-parameters are cast to the parameters' dtype. (Loops index views from 0 so Numba can
    drop its negative-index wraparound and vectorise.)"""
    dt = params.dtype.type
    p, g = params[lo:hi], grads[lo:hi]
    lr, mu, b2, eps = dt(hyper[LR]), dt(hyper[MU_OR_BETA1]), dt(hyper[BETA2]), dt(hyper[OPT_EPS])
    wd, one = dt(hyper[WEIGHT_DECAY]), dt(1)
    if code == SGD:
        for i in range(p.shape[0]):
            p[i] -= lr * (g[i] + wd * p[i])               # w ← w − η (g + λw)
    elif code == MOMENTUM:
        v, nesterov = state1[lo:hi], hyper[NESTEROV] != 0
        for i in range(p.shape[0]):
            gi = g[i] + wd * p[i]
            v[i] = v[i] * mu + gi                         # v ← μv + g
            p[i] -= lr * (gi + mu * v[i] if nesterov else v[i])   # w ← w − η (g + μv | v)
    elif code == RMSPROP:
        s, v = state1[lo:hi], state2[lo:hi]
        for i in range(p.shape[0]):
            gi = g[i] + wd * p[i]
            s[i] = s[i] * b2 + (one - b2) * gi * gi       # s ← αs + (1−α)g²
            step = gi / (np.sqrt(s[i]) + eps)
            if mu != 0:
                v[i] = v[i] * mu + step                   # v ← μv + g/(√s + ε)
                step = v[i]
            p[i] -= lr * step
    else:                                                 # Adam, AdamW
        m, v = state1[lo:hi], state2[lo:hi]
        c1, c2 = one - mu, one - b2
        # fastnn.kernels.adam_scalars: η/(1−β₁ᵗ) and 1/√(1−β₂ᵗ), in float64
        step_size = dt(hyper[LR] / (1 - hyper[MU_OR_BETA1] ** t))
        inv_root_c2 = dt(1 / np.sqrt(1 - hyper[BETA2] ** t))
        l2 = wd if code == ADAM else dt(0)                # Adam: λw in the gradient
        shrink = one - lr * wd if code == ADAMW else one  # AdamW: w ← w(1 − ηλ) first
        for i in range(p.shape[0]):
            gi = g[i] + l2 * p[i]
            m[i] = m[i] * mu + c1 * gi                    # m ← β₁m + (1−β₁)g
            v[i] = v[i] * b2 + c2 * gi * gi               # v ← β₂v + (1−β₂)g²
            p[i] = p[i] * shrink - step_size * (m[i] / (np.sqrt(v[i]) * inv_root_c2 + eps))


@njit(parallel=True, cache=True, error_model="numpy")
def update_kernel(code, p, g, s1, s2, hyper, t):
    """One optimizer step over all of p, block by block (in parallel for large p)."""
    n = p.shape[0]
    n_blocks = (n + BLOCK - 1) // BLOCK
    if n_blocks < PARALLEL_UPDATE_BLOCKS:
        update_range(code, p, g, s1, s2, 0, n, hyper, t)
    else:
        for blk in prange(n_blocks):
            update_range(code, p, g, s1, s2, blk * BLOCK, min(n, blk * BLOCK + BLOCK), hyper, t)
