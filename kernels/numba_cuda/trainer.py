"""``fit`` on the GPU: a training plan (``fastnn.plan``) executed with device kernels.

The trainer copies the plan's flat parameter, gradient and BatchNorm-state buffers and the
optimizer state to the device once; every op reads device views at the plan's offsets. The
training set stays on the device when it fits (else each minibatch is copied once). An epoch
is then device kernels only, one launch per op and pass: minibatch gather by ``order``, the
forward ops, the loss (summed into a device ``totals`` vector with the number of right
predictions), the backward ops in reverse, one optimizer launch. The only transfers in an
epoch are ``order`` (and the row weights in epoch order, for a weighted fit) in and the two
totals out; the hyper-parameters are read from the plan each epoch. Dropout's keys and the
minibatches' weight sums are computed on the host, which launches every minibatch anyway.
:meth:`DeviceTrainer.gradients` (a rank's share of a distributed step) copies the parameters in
and the gradients out.
:meth:`DeviceTrainer.sync` copies everything back into the host buffers, and
:meth:`DeviceTrainer.push` the weights a callback restored on the host to the device.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from .. import (ACT, ADD, AUX, BATCHNORM, BETA2, BN_EPS, BN_MOMENTUM, CLIP_NORM, DROPOUT,
                DROPOUT_P, DSKIP, DX, GRAD_ADD, GRAD_SKIP, GRAD_WRITE, IN, KIND, LR, MSE,
                MU_OR_BETA1, NEEDS_PREACTIVATION, NESTEROV, NIN, NOUT, OPT_EPS, OUT, POFF, SKIP,
                SOFF, STANDARDIZE, WEIGHT_DECAY, dropout_key)
from . import ops

#: keep the training set on the device when it needs at most this fraction of free memory
#: (0: never, copy each minibatch from the host)
RESIDENT_FRACTION = 0.5


def make_trainer(plan) -> DeviceTrainer:
    """The device trainer executing ``plan`` (a :class:`fastnn.plan.Plan`)."""
    return DeviceTrainer(plan)


class DeviceTrainer:
    """Trains a plan with its buffers resident on the GPU (see the module docstring)."""

    def __init__(self, plan):
        self.plan = plan
        self._host = [plan.params, plan.grads, plan.state, plan.s1, plan.s2]
        self._device = [cuda.to_device(a) if a.size else None for a in self._host]
        self.params, self.grads, self.state, self.s1, self.s2 = self._device
        dt = plan.dtype
        self.acts = cuda.device_array(plan.act_size, dt)
        self.dacts = cuda.device_array(plan.act_size, dt)
        self.aux = cuda.device_array(plan.aux_size, dt)
        self.tmp = cuda.device_array(plan.batch * plan.width, dt)
        self.row_dot = cuda.device_array(plan.batch, dt)
        self.norm2 = cuda.device_array(1, np.float64)      # clip_norm's squared norm
        self._places = None        # device row numbers for Dropout (a distributed step)
        self._data = None          # (host X, host y, device X, device Y) of the resident set
        self._staging = {}         # rows -> pinned host buffers for non-resident minibatches,
        #                            (columns, dtype) -> the device targets of a minibatch

    @staticmethod
    def _rows(buffer, offset: int, rows: int, cols: int):
        """The (rows, cols) C-contiguous device view of a flat device buffer at offset."""
        return buffer[offset:offset + rows * cols].reshape(rows, cols)

    def prepare(self, X, y) -> None:
        """Nothing to do ahead: the kernels compile on their first launch (as PTX)."""

    # -- one epoch ----------------------------------------------------------------------------
    def run_epoch(self, X: np.ndarray, y: np.ndarray, order: np.ndarray, w=None):
        """Train on the minibatches order[i:i + batch], rows weighted by ``w`` (None: all 1;
        a minibatch of weight 0 is skipped); return (Σ wᵢ × row loss, right predictions or
        None for mse)."""
        plan = self.plan
        Y = y.reshape(len(y), -1)                  # labels as a column, like targets (n, k)
        resident = self._resident(X, y, Y)
        d_order = cuda.to_device(np.ascontiguousarray(order, np.int64)) if resident else None
        totals = cuda.to_device(np.zeros(2))
        yb = self._targets(Y)
        starts = np.arange(0, len(order), plan.batch)
        if w is None:
            d_w, masses = None, np.minimum(plan.batch, len(order) - starts).astype(np.float64)
        else:
            w_ordered = np.ascontiguousarray(w[order], np.float64)
            d_w, masses = cuda.to_device(w_ordered), np.add.reduceat(w_ordered, starts)
        for start, mass in zip(starts.tolist(), masses.tolist()):
            if mass == 0:
                continue                           # weight 0: the batch counts for nothing
            nb = min(plan.batch, len(order) - start)
            Xb, Yb = self._rows(self.acts, 0, nb, X.shape[1]), yb[:nb]
            if resident:
                ops.gather_rows(self._data[2], self._data[3], d_order, start, Xb, Yb)
            else:
                X_host, Y_host = self._staged(nb, X, Y)
                idx = order[start:start + nb]
                np.take(X, idx, axis=0, out=X_host)
                np.take(Y, idx, axis=0, out=Y_host)
                Xb.copy_to_device(X_host)
                Yb.copy_to_device(Y_host)
            self._gradients(nb, Yb, totals, None if d_w is None else d_w[start:start + nb],
                            1 / mass)
            self._update()
            plan.train_steps[0] += 1
        return self._totals(totals)

    def gradients(self, X, y, rows, w, places, mass: float):
        """Fill the plan's (host) gradients with Σ wᵢ∇lᵢ / mass over the minibatch X[rows]
        (Dropout masks of row numbers ``places``) from the host parameters, updating nothing:
        one copy of the parameters in and of the gradients out."""
        plan, nb = self.plan, len(rows)
        self.params.copy_to_device(plan.params)
        Y = y.reshape(len(y), -1)
        X_host, Y_host = self._staged(nb, X, Y)
        np.take(X, rows, axis=0, out=X_host)
        np.take(Y, rows, axis=0, out=Y_host)
        Xb, Yb = self._rows(self.acts, 0, nb, X.shape[1]), self._targets(Y)[:nb]
        Xb.copy_to_device(X_host)
        Yb.copy_to_device(Y_host)
        totals = cuda.to_device(np.zeros(2))
        self._places = cuda.to_device(np.ascontiguousarray(places, np.int64))
        try:
            self._gradients(nb, Yb, totals, None if w is None else cuda.to_device(
                np.ascontiguousarray(w[rows], np.float64)), 1 / mass)
        finally:
            self._places = None
        self.grads.copy_to_host(plan.grads)
        return self._totals(totals)

    def _totals(self, totals):
        """(Σ wᵢ × row loss, right predictions or None for mse) from the device totals."""
        loss_sum, n_right = totals.copy_to_host()
        return float(loss_sum), (None if self.plan.loss == MSE else int(n_right))

    def _gradients(self, nb: int, Yb, totals, wb, inv_mass: float) -> None:
        """Forward, loss and backward for the gathered minibatch: the gradients on the device."""
        plan = self.plan
        keys = [dropout_key(plan.seed, int(plan.train_steps[0]), op[AUX]) if op[KIND] == DROPOUT
                else 0 for op in plan.ops]
        for op, fop, key in zip(plan.ops, plan.fops, keys):
            self._forward(op, fop, nb, key)
        last = plan.ops[-1]
        Z = self._rows(self.acts, last[OUT], nb, last[NOUT])
        dZ = self._rows(self.dacts, last[OUT], nb, last[NOUT])
        ops.loss(plan.loss, Z, Yb, dZ, totals, wb, inv_mass)
        for op, fop, key in zip(plan.ops[::-1], plan.fops[::-1], keys[::-1]):
            self._backward(op, fop, nb, key)

    def _mean_std(self, op):
        """A Standardize op's (mean, std) device views."""
        s, n = op[SOFF], op[NIN]
        return self.state[s:s + n], self.state[s + n:s + 2 * n]

    def _preactivations(self, op, nb: int):
        """The Dense op's saved pre-activation z (GELU, SiLU), or None."""
        if op[ACT] not in NEEDS_PREACTIVATION:
            return None
        return self._rows(self.aux, op[AUX], nb, op[NOUT])

    def _forward(self, op, fop, nb: int, key: int) -> None:
        nin, nout = op[NIN], op[NOUT]
        x = self._rows(self.acts, op[IN], nb, nin)
        out = self._rows(self.acts, op[OUT], nb, nout)
        if op[KIND] == ADD:                                      # y = x + block(x)
            ops.add(self._rows(self.acts, op[SKIP], nb, nout), x, out)
        elif op[KIND] == DROPOUT:                                # y = x ⊙ mask / (1 − p)
            ops.dropout(x, fop[DROPOUT_P], key, out, rows=self._places)
        elif op[KIND] == STANDARDIZE:                            # y = (x − mean) / std
            ops.standardize(x, *self._mean_std(op), out)
        elif op[KIND] == BATCHNORM:
            p, s, aux = op[POFF], op[SOFF], op[AUX]
            ops.batchnorm_forward(x, self.params[p:p + nin], self.params[p + nin:p + 2 * nin],
                                  self.state[s:s + nin], self.state[s + nin:s + 2 * nin],
                                  fop[BN_MOMENTUM], fop[BN_EPS], True, out,
                                  self._rows(self.aux, aux, nb, nin),
                                  self._inv_std(aux, nin))
        else:                                                    # Dense
            p = op[POFF]
            ops.dense_forward(x, self._rows(self.params, p, nin, nout),
                              self.params[p + nin * nout:p + nin * nout + nout], op[ACT], out,
                              self._preactivations(op, nb))

    def _backward(self, op, fop, nb: int, key: int) -> None:
        nin, nout = op[NIN], op[NOUT]
        d_out = self._rows(self.dacts, op[OUT], nb, nout)
        if op[KIND] == ADD:                                      # both inputs get ∂L/∂y
            for field, block in ((DX, op[IN]), (DSKIP, op[SKIP])):
                self._give(self._rows(self.dacts, block, nb, nin), d_out, op[field])
            return
        if op[KIND] == STANDARDIZE:                              # ∂L/∂x = ∂L/∂y / std
            if op[DX] != GRAD_SKIP:
                ops.standardize(d_out, *self._mean_std(op),
                                self._rows(self.dacts, op[IN], nb, nin), True, op[DX])
            return
        if op[KIND] == DROPOUT:                                  # ∂L/∂x = ∂L/∂y ⊙ mask/(1 − p)
            if op[DX] != GRAD_SKIP:
                ops.dropout(d_out, fop[DROPOUT_P], key, self._rows(self.dacts, op[IN], nb, nin),
                            op[DX], self._places)
            return
        dX, mode = self._input_gradient(op, nb)
        p = op[POFF]
        if op[KIND] == BATCHNORM:
            ops.batchnorm_backward(d_out, self._rows(self.aux, op[AUX], nb, nin),
                                   self._inv_std(op[AUX], nin), self.params[p:p + nin], dX,
                                   self.grads[p:p + nin], self.grads[p + nin:p + 2 * nin])
        else:                                                    # Dense
            n_w = nin * nout
            ops.dense_backward(d_out, self._rows(self.acts, op[IN], nb, nin),
                               self._rows(self.params, p, nin, nout), self._rows(
                                   self.acts, op[OUT], nb, nout), op[ACT],
                               None if mode == GRAD_SKIP else dX,
                               self._rows(self.grads, p, nin, nout),
                               self.grads[p + n_w:p + n_w + nout], self.row_dot[:nb],
                               self._preactivations(op, nb))
        if mode == GRAD_ADD:                                     # x also feeds a skip
            dIn = self._rows(self.dacts, op[IN], nb, nin)
            ops.add(dIn, dX, dIn)

    def _input_gradient(self, op, nb: int):
        """(where the op writes ∂L/∂input, the op's DX mode): the input's own gradient block
        when written, a scratch block when added afterwards or not needed."""
        mode = op[DX]
        if mode == GRAD_WRITE:
            return self._rows(self.dacts, op[IN], nb, op[NIN]), mode
        return self._rows(self.tmp, 0, nb, op[NIN]), mode

    @staticmethod
    def _give(target, gradient, mode: int) -> None:
        """target = gradient (GRAD_WRITE) or += gradient (GRAD_ADD)."""
        if mode == GRAD_WRITE:
            target.copy_to_device(gradient)
        elif mode == GRAD_ADD:
            ops.add(target, gradient, target)

    def _inv_std(self, aux: int, n: int):
        start = aux + self.plan.batch * n                        # after x̂ (batch, n)
        return self.aux[start:start + n]

    def _update(self) -> None:
        """The plan's optimizer rule over the flat buffer (one launch; two more to clip)."""
        plan = self.plan
        h = plan.hyper
        plan.step[0] += 1
        if h[CLIP_NORM] > 0:
            ops.clip_grad_norm(self.grads, h[CLIP_NORM], self.norm2)
        ops.optimizer_step(plan.rule, self.params, self.grads, self.s1, self.s2, h[LR],
                           h[MU_OR_BETA1], h[BETA2], h[OPT_EPS], h[WEIGHT_DECAY],
                           h[NESTEROV] != 0, int(plan.step[0]))

    def _resident(self, X, y, Y) -> bool:
        """Whether the training set is on the device, copying it there once when it fits."""
        if self._data is not None and self._data[0] is X and self._data[1] is y:
            return True
        self._data = None
        free = cuda.current_context().get_memory_info()[0]
        if not (RESIDENT_FRACTION > 0 and X.nbytes + Y.nbytes <= RESIDENT_FRACTION * free):
            return False
        self._data = (X, y, cuda.to_device(np.ascontiguousarray(X)),
                      cuda.to_device(np.ascontiguousarray(Y)))
        return True

    def _targets(self, Y):
        """The device buffer minibatch targets are gathered into, allocated once per layout."""
        key = (Y.shape[1], Y.dtype)
        if key not in self._staging:
            self._staging[key] = cuda.device_array((self.plan.batch, Y.shape[1]), Y.dtype)
        return self._staging[key]

    def _staged(self, rows: int, X, Y):
        """Pinned host buffers for minibatches of ``rows`` rows, allocated once."""
        if rows not in self._staging:
            self._staging[rows] = (cuda.pinned_array((rows, X.shape[1]), X.dtype),
                                   cuda.pinned_array((rows, Y.shape[1]), Y.dtype))
        return self._staging[rows]

    def push(self) -> None:
        """Copy the parameters and running statistics a callback restored on the host to the
        device (nothing else: the optimizer state and the data stay where they are)."""
        for host, device in ((self.plan.params, self.params), (self.plan.state, self.state)):
            if host.size:
                device.copy_to_device(host)

    def sync(self) -> None:
        """Copy parameters, gradients, running statistics and optimizer state to the host."""
        for host, device in zip(self._host, self._device):
            if host.size:
                device.copy_to_host(host)

