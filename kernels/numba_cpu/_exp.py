"""A vectorisable exponential for the numba_cpu kernels.

Without Intel's SVML, LLVM turns ``math.exp`` on float32 into one libm call per element, which
made sigmoid-heavy networks exp-bound; :func:`exp_neg` is a branch-free Cody–Waite exponential
(error about 2 ulp, 2^t built from its exponent bits) that vectorises. float64 keeps
``math.exp`` (gradient checks need it).
"""
import math

import numpy as np
from numba import types
from numba.extending import overload

_LN2_HI = 0.693145751953125          # ln 2 split so that m·_LN2_HI is exact in float32
_LN2_LO = 1.428606765330187e-06
_LOG2E = 1.4426950408889634


def exp_neg(x):
    """e^x for x ≤ 0 (callers pass −|z| or z − max z, never more)."""
    return math.exp(x)


@overload(exp_neg)
def _exp_neg_overload(x):
    if not (isinstance(x, types.Float) and x.bitwidth == 32):
        return lambda x: math.exp(x)
    f = np.float32
    log2e, hi, lo, half, one, zero, lim = (f(c) for c in (_LOG2E, _LN2_HI, _LN2_LO, 0.5, 1.0,
                                                           0.0, -87.0))
    c2, c3, c4, c5, c6, c7 = (f(1 / math.factorial(k)) for k in range(2, 8))

    def impl(x):
        y = max(lim, x)                         # e^−87 ≈ 1.6e−38 is still normal
        t = np.floor(y * log2e + half)                    # y = t ln2 + r, |r| ≤ ln2/2, t ≤ 0
        r = (y - t * hi) - t * lo
        p = one + r * (one + r * (c2 + r * (c3 + r * (c4 + r * (c5 + r * (c6 + r * c7))))))
        scale = np.int32((np.int32(t) + 127) << 23).view(np.float32)   # 2^t from its bits
        return p * scale if x >= lim else zero
    return impl
