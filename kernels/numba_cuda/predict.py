"""``predict`` and ``evaluate`` on the GPU: an inference plan (``fastnn.plan.InferencePlan``)
executed with device kernels.

Per call the parameters and running statistics are copied to the device once (they are the
model's host buffers, which a fit's trainer has synced), then the rows go through in chunks of
at most ``plan.rows``: one copy in, one launch per op into a device workspace laid out by the
plan, the output block copied out. The layer-by-layer path copied every layer's weights, input
and output for every batch. Each chunk is checked for NaN and Inf on the host as it is sent.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from .. import (ACT, ADD, BATCHNORM, BN_EPS, BN_MOMENTUM, IN, KIND, NEEDS_PREACTIVATION, NIN,
                NOUT, OUT, POFF, SKIP, SOFF, STANDARDIZE, check_predict_arrays)
from . import ops


class DevicePredictor:
    """Runs an inference plan's forward pass on the device (see the module docstring)."""

    def __init__(self, plan):
        self.plan = plan
        dt = plan.dtype
        self.acts = cuda.device_array(plan.act_size, dt)
        # GELU's and SiLU's z, or BatchNorm's x̂ (rows × nin) then its 1/σ
        self.scratch = cuda.device_array(max(plan.scratch_size, 1), dt)
        self.x = cuda.device_array((plan.rows, plan.in_features), dt)

    def _block(self, offset: int, rows: int, cols: int, x):
        """The (rows, cols) device view of the workspace block at offset (0: the input x)."""
        if offset == 0:
            return x
        return self.acts[offset:offset + rows * cols].reshape(rows, cols)

    def run(self, X, out) -> bool:
        """out (n, out_features) = the network's output for X (n, in_features); whether every
        value of X was finite (the call stops at the first chunk holding a NaN or Inf)."""
        plan = self.plan
        X = np.ascontiguousarray(X, plan.dtype)
        check_predict_arrays(plan, X, out)
        o = np.ascontiguousarray(out, plan.dtype)
        params = cuda.to_device(plan.params)
        state = cuda.to_device(plan.state) if plan.state.size else None
        for r0 in range(0, len(X), plan.rows):
            chunk = X[r0:r0 + plan.rows]
            if not np.isfinite(chunk).all():
                return False
            m = len(chunk)
            x = self.x[:m]
            x.copy_to_device(chunk)
            for op, fop in zip(plan.ops, plan.fops):
                self._forward(op, fop, m, x, params, state)
            self._block(plan.out, m, plan.out_features, x).copy_to_host(o[r0:r0 + m])
        if o is not out:
            out[...] = o
        return True

    def _forward(self, op, fop, m: int, x, params, state) -> None:
        nin, nout = op[NIN], op[NOUT]
        src, dst = self._block(op[IN], m, nin, x), self._block(op[OUT], m, nout, x)
        if op[KIND] == ADD:                                      # y = x + block(x)
            ops.add(self._block(op[SKIP], m, nout, x), src, dst)
        elif op[KIND] == STANDARDIZE:                            # y = (x − mean) / std
            s = op[SOFF]
            ops.standardize(src, state[s:s + nin], state[s + nin:s + 2 * nin], dst)
        elif op[KIND] == BATCHNORM:                              # the running statistics
            p, s, z = op[POFF], op[SOFF], self.plan.rows * nin
            ops.batchnorm_forward(src, params[p:p + nin], params[p + nin:p + 2 * nin],
                                  state[s:s + nin], state[s + nin:s + 2 * nin],
                                  fop[BN_MOMENTUM], fop[BN_EPS], False, dst,
                                  self.scratch[:m * nin].reshape(m, nin),
                                  self.scratch[z:z + nin])
        else:                                                    # Dense: a = f(x·W + b)
            p = op[POFF]
            Z = (self.scratch[:m * nout].reshape(m, nout) if op[ACT] in NEEDS_PREACTIVATION
                 else None)
            ops.dense_forward(src, params[p:p + nin * nout].reshape(nin, nout),
                              params[p + nin * nout:p + nin * nout + nout], op[ACT], dst, Z)


def make_predictor(plan) -> DevicePredictor:
    """The device forward pass executing ``plan`` (a :class:`fastnn.plan.InferencePlan`)."""
    return DevicePredictor(plan)
