"""``fit`` on the GPU: the fused-trainer protocol of ``Sequential._make_trainer``.

The trainer copies the flat parameter and gradient buffers, the BatchNorm running statistics
and the optimizer state to the device once; every layer gets device views at the same offsets
as its host views. The training set stays on the device when it fits (else each minibatch is
copied once). An epoch is then device kernels only, one launch per operation: minibatch
gather by ``order``, forward, loss (summed into a device ``totals`` vector with the number of
right predictions), backward, one optimizer launch. The only transfers in an epoch are
``order`` in and the two totals out. :meth:`DeviceTrainer.sync` copies everything back into
the model's host buffers.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from ...layers import BatchNorm, Dense, Residual
from ...optimizers import SGD, Adam
from .. import IDENTITY
from . import ops

#: keep the training set on the device when it needs at most this fraction of free memory
#: (0: never, copy each minibatch from the host)
RESIDENT_FRACTION = 0.5


def make_trainer(model, loss, optimizer, batch_size: int) -> DeviceTrainer | None:
    """A :class:`DeviceTrainer`, or None for an optimizer it has no kernel for."""
    if type(optimizer) not in (SGD, Adam):
        return None
    return DeviceTrainer(model, loss, optimizer, batch_size)


class DeviceTrainer:
    """Trains ``model`` with its parameters resident on the GPU (see the module docstring)."""

    def __init__(self, model, loss, optimizer, batch_size: int):
        self.model, self.loss, self.optimizer = model, loss, optimizer
        self.batch_size = batch_size
        optimizer.ensure_state(model.parameters())
        self._host = [model._params, model._grads, model._state] + self._optimizer_state()
        self._device = [cuda.to_device(a) if a.size else None for a in self._host]
        self.params, self.grads, self.state = self._device[:3]
        self.layers = [_device_layer(layer, self) for layer in model.layers]
        self._data = None          # (host X, host y, device X, device Y) of the resident set
        self._workspaces = {}      # batch rows -> device buffers

    def _optimizer_state(self) -> list[np.ndarray]:
        opt = self.optimizer
        if isinstance(opt, Adam):
            return [opt.m, opt.v]
        return [opt.velocity] if opt.momentum else []

    def device_view(self, host_view: np.ndarray):
        """The device twin of a view into the model's parameter, gradient or state buffer."""
        for host, device in zip(self._host[:3], self._device[:3]):
            offset = (host_view.ctypes.data - host.ctypes.data) // host.itemsize
            if host.size and 0 <= offset < host.size and host_view.dtype == host.dtype:
                return device[offset:offset + host_view.size].reshape(host_view.shape)
        raise ValueError("the array is not a view into the model's buffers")

    # -- one epoch ----------------------------------------------------------------------------
    def run_epoch(self, X: np.ndarray, y: np.ndarray, order: np.ndarray):
        """Train on the minibatches order[i:i + batch_size]; return (Σ batch loss × rows,
        right predictions or None for mse)."""
        Y = y.reshape(len(y), -1)                  # labels as a column, like targets (n, k)
        resident = self._resident(X, y, Y)
        d_order = cuda.to_device(order) if resident else None
        totals = cuda.to_device(np.zeros(2))
        for start in range(0, len(X), self.batch_size):
            rows = min(self.batch_size, len(X) - start)
            ws = self._workspace(rows, X, Y)
            if resident:
                ops.gather_rows(self._data[2], self._data[3], d_order, start, ws["X"], ws["y"])
            else:
                idx = order[start:start + rows]
                np.take(X, idx, axis=0, out=ws["X_host"])
                np.take(Y, idx, axis=0, out=ws["y_host"])
                ws["X"].copy_to_device(ws["X_host"])
                ws["y"].copy_to_device(ws["y_host"])
            self._step(ws, totals)
        loss_sum, n_right = totals.copy_to_host()
        return float(loss_sum), (None if self.loss.name == "mse" else int(n_right))

    def _step(self, ws, totals) -> None:
        """Forward, loss, backward and optimizer update for the minibatch in ws["X"], ws["y"]."""
        h, last = ws["X"], len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer.forward(h, ws["layers"][i], True, self.loss.on_logits and i == last)
        ops.loss(self.loss.kernel, h, ws["y"], ws["dout"], totals)
        d = ws["dout"]
        for i in range(last, -1, -1):
            d = self.layers[i].backward(d, ws["layers"][i], i > 0)
        self._update()

    def _update(self) -> None:
        opt, state = self.optimizer, self._device[3:]
        if isinstance(opt, Adam):
            opt.t += 1                             # as Adam.step does
            ops.adam(self.params, self.grads, state[0], state[1], opt.lr, opt.beta1, opt.beta2,
                     opt.eps, opt.t)
        elif opt.momentum:
            ops.sgd_momentum(self.params, self.grads, state[0], opt.lr, opt.momentum)
        else:
            ops.sgd(self.params, self.grads, opt.lr)

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

    def _workspace(self, rows: int, X, Y) -> dict:
        """Device buffers for minibatches of ``rows`` rows, allocated once."""
        ws = self._workspaces.get(rows)
        if ws is None:
            dtype = self.model.dtype
            ws = {"X": cuda.device_array((rows, X.shape[1]), X.dtype),
                  "y": cuda.device_array((rows, Y.shape[1]), Y.dtype),
                  "X_host": cuda.pinned_array((rows, X.shape[1]), X.dtype),
                  "y_host": cuda.pinned_array((rows, Y.shape[1]), Y.dtype),
                  "dout": cuda.device_array((rows, self.model.out_features), dtype),
                  "layers": [layer.workspace(rows, dtype) for layer in self.layers]}
            self._workspaces[rows] = ws
        return ws

    def sync(self) -> None:
        """Copy parameters, gradients, running statistics and optimizer state to the host."""
        for host, device in zip(self._host, self._device):
            if host.size:
                device.copy_to_host(host)


# -- device twins of the layers (same passes as fastnn.layers, on device arrays) -----------
def _device_layer(layer, trainer: DeviceTrainer):
    kinds = {Dense: _Dense, BatchNorm: _BatchNorm, Residual: _Residual}
    if type(layer) not in kinds:
        raise TypeError(f"the numba_cuda trainer has no kernels for {layer!r}")
    return kinds[type(layer)](layer, trainer)


class _Dense:
    def __init__(self, layer, t):
        self.W, self.b = t.device_view(layer._W), t.device_view(layer._b)
        self.dW, self.db = t.device_view(layer._dW), t.device_view(layer._db)
        self.code, self.n_in, self.n_out = layer._code, layer.in_features, layer.out_features

    def workspace(self, rows, dtype):
        return {"out": cuda.device_array((rows, self.n_out), dtype),
                "dX": cuda.device_array((rows, self.n_in), dtype),
                "row_dot": cuda.device_array(rows, dtype)}

    def forward(self, X, ws, training, logits):
        ws["X"], ws["code"] = X, IDENTITY if logits else self.code  # saved for backward
        ops.dense_forward(X, self.W, self.b, ws["code"], ws["out"])
        return ws["out"]

    def backward(self, dOut, ws, need_dX):
        dX = ws["dX"] if need_dX else None
        ops.dense_backward(dOut, ws["X"], self.W, ws["out"], ws["code"], dX, self.dW, self.db,
                           ws["row_dot"])
        return dX


class _BatchNorm:
    def __init__(self, layer, t):
        self.gamma, self.beta = t.device_view(layer.gamma), t.device_view(layer.beta)
        self.dgamma, self.dbeta = t.device_view(layer._dgamma), t.device_view(layer._dbeta)
        self.mean, self.var = t.device_view(layer.running_mean), t.device_view(layer.running_var)
        self.momentum, self.eps, self.n = layer.momentum, layer.eps, layer.in_features

    def workspace(self, rows, dtype):
        return {name: cuda.device_array((rows, self.n), dtype) for name in ("out", "xhat", "dX")} \
            | {"inv_std": cuda.device_array(self.n, dtype)}

    def forward(self, X, ws, training, logits):
        ops.batchnorm_forward(X, self.gamma, self.beta, self.mean, self.var, self.momentum,
                              self.eps, training, ws["out"], ws["xhat"], ws["inv_std"])
        return ws["out"]

    def backward(self, dOut, ws, need_dX):
        ops.batchnorm_backward(dOut, ws["xhat"], ws["inv_std"], self.gamma, ws["dX"],
                               self.dgamma, self.dbeta)
        return ws["dX"]


class _Residual:
    def __init__(self, layer, t):
        self.block = [_device_layer(l, t) for l in layer.block]
        self.n = layer.out_features

    def workspace(self, rows, dtype):
        return {"out": cuda.device_array((rows, self.n), dtype),
                "skip": cuda.device_array((rows, self.n), dtype),
                "block": [l.workspace(rows, dtype) for l in self.block]}

    def forward(self, X, ws, training, logits):
        h = X
        for layer, lws in zip(self.block, ws["block"]):
            h = layer.forward(h, lws, training, False)
        ops.add(X, h, ws["out"])                                 # y = x + block(x)
        return ws["out"]

    def backward(self, dOut, ws, need_dX):
        ws["skip"].copy_to_device(dOut)                          # the block overwrites dOut
        d = dOut
        for layer, lws in zip(reversed(self.block), reversed(ws["block"])):
            d = layer.backward(d, lws, True)
        ops.add(d, ws["skip"], d)                                # ∂L/∂x = ∂L/∂y + ∂L/∂y ∂block/∂x
        return d
