"""The kernel interface on host NumPy arrays: copy the inputs in, launch, copy the outputs out.

This is what ``fastnn.kernels.INTERFACE`` asks of a backend, so the shared kernel-vs-reference
tests and the layer-by-layer training path (``model.fuse = False``, predict, evaluate) run the
CUDA kernels. Training with ``fit`` does not come through here: the fused trainer keeps
everything on the device (:mod:`.trainer`).
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from .. import BINARY_CROSS_ENTROPY, CROSS_ENTROPY, MSE, NEEDS_PREACTIVATION
from . import ops


def _in(a: np.ndarray):
    """A device copy of a host array."""
    return cuda.to_device(np.ascontiguousarray(a))


def _out(like: np.ndarray):
    """An uninitialised device array shaped like a host output."""
    return cuda.device_array(like.shape, like.dtype)


def _back(device, host: np.ndarray) -> None:
    """Copy a device result into a host array in place (views of flat buffers included)."""
    host[...] = device.copy_to_host()


def dense_forward(X, W, b, act, out, Z=None):
    """out = f(X @ W + b); X (batch, in), W (in, out), b (out,), out (batch, out); Z receives
    z for GELU and SiLU."""
    d_out = _out(out)
    keeps_z = act in NEEDS_PREACTIVATION and Z is not None
    d_Z = _out(Z) if keeps_z else None
    ops.dense_forward(_in(X), _in(W), _in(b), act, d_out, d_Z)
    _back(d_out, out)
    if keeps_z:
        _back(d_Z, Z)


def dense_backward(dA, X, W, A, act, dX, dW, db, Z=None):
    """dA ← dZ = dA ⊙ f′; dW = Xᵀ dZ, db = Σ dZ, dX = dZ Wᵀ unless dX is None; Z is the
    pre-activation of GELU and SiLU layers."""
    d_dA, d_dW, d_db = _in(dA), _out(dW), _out(db)
    d_dX = None if dX is None else _out(dX)
    d_Z = _in(Z) if act in NEEDS_PREACTIVATION and Z is not None else None
    ops.dense_backward(d_dA, _in(X), _in(W), _in(A), act, d_dX, d_dW, d_db, Z=d_Z)
    for device, host in ((d_dA, dA), (d_dW, dW), (d_db, db), (d_dX, dX)):
        if host is not None:
            _back(device, host)


def _loss(code, Z, targets, dZ, weights):
    """Run a loss kernel; write dZ and return the (weighted) mean loss of the batch."""
    totals = cuda.to_device(np.zeros(2))
    d_dZ = _out(dZ)
    if weights is None:
        w, inv_mass = None, 1.0 / len(Z)
    else:
        w = np.ascontiguousarray(weights, np.float64).reshape(-1)
        if len(w) != len(Z):
            raise ValueError(f"weights has {len(w)} entries but the batch {len(Z)} rows")
        inv_mass = 1.0 / w.sum() if w.sum() > 0 else 0.0
        w = _in(w)
    ops.loss(code, _in(Z), _in(targets), d_dZ, totals, w, inv_mass)
    _back(d_dZ, dZ)
    return float(totals.copy_to_host()[0] * inv_mass)


def mse(Yhat, Y, dYhat, weights=None):
    """L = Σ wᵢ Σ ½(ŷ − y)² / Σ wᵢ (the batch mean without weights); writes
    dYhat = wᵢ(ŷ − y)/Σw."""
    return _loss(MSE, Yhat, Y, dYhat, weights)


def softmax_cross_entropy(Z, labels, dZ, weights=None):
    """L = Σ wᵢ (log Σ e^z − z_y) / Σ wᵢ; writes dZ = wᵢ(softmax(z) − onehot(y))/Σw."""
    return _loss(CROSS_ENTROPY, Z, np.asarray(labels).reshape(-1, 1), dZ, weights)


def sigmoid_binary_cross_entropy(Z, Y, dZ, weights=None):
    """L = Σ wᵢ Σ [−y log σ(z) − (1−y) log(1−σ(z))] / Σ wᵢ; writes dZ = wᵢ(σ(z) − y)/Σw."""
    return _loss(BINARY_CROSS_ENTROPY, Z, Y, dZ, weights)


def dropout(X, p, key, out, rows=None):
    """out = X ⊙ mask / (1 − p), the counter-based mask of ``key`` (fastnn.kernels); ``rows``
    numbers the rows in their minibatch (default 0, 1, …)."""
    d_out = _out(out)
    ops.dropout(_in(X), p, key, d_out, rows=None if rows is None else _in(
        np.asarray(rows, np.int64).reshape(-1)))
    _back(d_out, out)


def _optimize(step, params, grads, states, *hyper) -> None:
    """Copy params and the state arrays in, run ``step`` (an ops optimizer), copy them out."""
    d_params = _in(params)
    d_states = [None if s is None else _in(s) for s in states]
    step(d_params, _in(grads), *d_states, *hyper)
    for device, host in ((d_params, params), *zip(d_states, states)):
        if host is not None:
            _back(device, host)


def sgd(params, grads, lr, weight_decay=0.0):
    """w ← w − η (g + λw), in place."""
    _optimize(ops.sgd, params, grads, (), lr, weight_decay)


def sgd_momentum(params, grads, velocity, lr, momentum, nesterov=False, weight_decay=0.0):
    """v ← μv + g; w ← w − η v (Nesterov: η (g + μv)), in place."""
    _optimize(ops.sgd_momentum, params, grads, (velocity,), lr, momentum, nesterov,
              weight_decay)


def adam(params, grads, m, v, lr, beta1, beta2, eps, t, weight_decay=0.0):
    """Adam, in place; ``t`` is the 1-based step count."""
    _optimize(ops.adam, params, grads, (m, v), lr, beta1, beta2, eps, t, weight_decay)


def adamw(params, grads, m, v, lr, beta1, beta2, eps, t, weight_decay):
    """AdamW, in place; ``t`` is the 1-based step count."""
    _optimize(ops.adamw, params, grads, (m, v), lr, beta1, beta2, eps, t, weight_decay)


def rmsprop(params, grads, square_avg, velocity, lr, alpha, eps, momentum=0.0,
            weight_decay=0.0):
    """RMSprop (centered=False), in place; ``velocity`` is used only with momentum."""
    _optimize(ops.rmsprop, params, grads, (square_avg, velocity if momentum else None), lr,
              alpha, eps, momentum, weight_decay)


def batchnorm_forward(X, gamma, beta, running_mean, running_var, momentum, eps, training,
                      out, xhat, inv_std):
    """Batch normalisation per feature (running statistics updated when training)."""
    d_mean, d_var = _in(running_mean), _in(running_var)
    d_out, d_xhat, d_inv_std = _out(out), _out(xhat), _out(inv_std)
    ops.batchnorm_forward(_in(X), _in(gamma), _in(beta), d_mean, d_var, momentum, eps,
                          training, d_out, d_xhat, d_inv_std)
    for device, host in ((d_mean, running_mean), (d_var, running_var), (d_out, out),
                         (d_xhat, xhat), (d_inv_std, inv_std)):
        _back(device, host)


def batchnorm_backward(dY, xhat, inv_std, gamma, dX, dgamma, dbeta):
    """Backward of training-mode batch normalisation; writes dX, dgamma, dbeta."""
    d_dX, d_dgamma, d_dbeta = _out(dX), _out(dgamma), _out(dbeta)
    ops.batchnorm_backward(_in(dY), _in(xhat), _in(inv_std), _in(gamma), d_dX, d_dgamma,
                           d_dbeta)
    for device, host in ((d_dX, dX), (d_dgamma, dgamma), (d_dbeta, dbeta)):
        _back(device, host)
