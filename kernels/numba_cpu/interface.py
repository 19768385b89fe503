"""The kernel interface of fastnn.kernels (signatures and semantics of ``reference.py``).

Thin Python wrappers over the compiled kernels. The kernels are compiled for C-contiguous
float32 and float64 arrays only (a few signatures keep JIT time down); an argument in another
layout or dtype is copied into one here, and an output that is not C-contiguous is computed
into a temporary and copied back. Arrays from a model are already contiguous, so the training
path never copies.
"""
import functools
import threading

import numba
import numpy as np

from .. import (ACTIVATIONS, ADAM, ADAMW, BINARY_CROSS_ENTROPY, CROSS_ENTROPY, MOMENTUM, MSE,
                NEEDS_PREACTIVATION, RMSPROP, SGD, dropout_threshold)
from .._threads import choose_numba_layer, kernel_blas_threads
from ._split import BLAS_THREADS_WORK
from .batchnorm import bn_backward_kernel, bn_forward_kernel
from .dense import dense_backward_kernel, dense_forward_kernel
from .dropout import dropout_kernel
from .losses import loss_kernel
from .optimizers import update_kernel

#: serialises this backend's kernel launches: Numba's workqueue threading layer (chosen in
#: __init__) aborts the process when parallel code is launched from two Python threads at once
LAUNCH_LOCK = threading.Lock()


def serialised(function):
    """Run ``function`` holding :data:`LAUNCH_LOCK`, with the BLAS the kernels call inside
    their parallel regions limited to one thread (restored on return)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        choose_numba_layer()
        with LAUNCH_LOCK, kernel_blas_threads(1):
            return function(*args, **kwargs)
    return wrapper


_EMPTY = {np.dtype(t): (np.empty((0, 0), t), np.empty(0, t)) for t in (np.float32, np.float64)}
_NO_LABELS = np.empty(0, np.int64)


def _dtype(out) -> np.dtype:
    return out.dtype if out.dtype in _EMPTY else np.dtype(np.float64)


def writeable_input(a, dt):
    """a as a C-contiguous, writeable array of dtype dt (no copy when it already is): the one
    array type the kernels are compiled for, so a read-only, Fortran-ordered, strided or
    other-dtype input never triggers a compilation of its own."""
    if isinstance(a, np.ndarray) and a.dtype == dt and a.flags.c_contiguous \
            and a.flags.writeable:
        return a
    return np.array(a, dt, order="C")


_input = writeable_input


def _output(a, dt):
    """The array a kernel may write: a itself when C-contiguous of dtype dt, else a copy."""
    if a.dtype == dt and a.flags.c_contiguous and a.flags.writeable:
        return a
    return np.array(a, dt, order="C")


def _write_back(target, result):
    if result is not target:
        target[...] = result


def _threads(X, W):
    """(threads for the kernel's row chunks, threads for its BLAS) for a dense layer: a big
    matmul runs on threaded BLAS outside any parallel region (see _split.BLAS_THREADS_WORK)."""
    threads = numba.get_num_threads()
    if X.shape[0] * W.shape[0] * W.shape[1] >= BLAS_THREADS_WORK:
        return 1, threads
    return threads, 1


def _check_act(act):
    if act not in ACTIVATIONS.values():
        raise ValueError(f"unknown activation code {act}")
    return int(act)


def _preactivations(act, Z, dt, placeholder, kernel):
    """The array the kernel writes or reads z in: Z (C-contiguous, dtype dt) for GELU and
    SiLU, where it is required, else ``placeholder``, which the kernel does not touch."""
    if act not in NEEDS_PREACTIVATION:
        return placeholder
    if Z is None:
        raise ValueError(f"{kernel}: activation code {act} needs the pre-activation buffer Z")
    return _output(Z, dt)


@serialised
def dense_forward(X, W, b, act, out, Z=None):
    """out = f(X @ W + b); X (batch, in), W (in, out), b (out,), out (batch, out); Z receives
    z for GELU and SiLU."""
    dt = _dtype(out)
    o = _output(out, dt)
    zs = _preactivations(_check_act(act), Z, dt, o, "dense_forward")
    threads, blas_threads = _threads(X, W)
    with kernel_blas_threads(blas_threads):
        dense_forward_kernel(_input(X, dt), _input(W, dt), _input(b, dt), int(act), o, zs,
                             threads)
    _write_back(out, o)
    if zs is not o:
        _write_back(Z, zs)


@serialised
def dense_backward(dA, X, W, A, act, dX, dW, db, Z=None):
    """Gradients of a dense layer from ∂L/∂a; dA is overwritten with dZ = ∂L/∂z.

    dW (in, out), db (out,) are written; dX (batch, in) is written unless it is None; Z is
    the pre-activation (GELU and SiLU).
    """
    dt = _dtype(dW)
    dZ, gW, gb = _output(dA, dt), _output(dW, dt), _output(db, dt)
    gX = _EMPTY[dt][0] if dX is None else _output(dX, dt)
    zs = _preactivations(_check_act(act), Z, dt, dZ, "dense_backward")
    threads, blas_threads = _threads(X, W)
    with kernel_blas_threads(blas_threads):
        dense_backward_kernel(dZ, _input(X, dt), _input(W, dt), _input(A, dt), int(act), gX,
                              dX is not None, gW, gb, zs, threads)
    for target, result in ((dA, dZ), (dW, gW), (db, gb), (dX, gX)):
        if target is not None:
            _write_back(target, result)


_NO_WEIGHTS = np.empty(0)


def _loss(code, Z, labels, Y, dZ, weights):
    dt = _dtype(dZ)
    d = _output(dZ, dt)
    w = _NO_WEIGHTS if weights is None else _input(weights, np.float64).reshape(-1)
    if len(w) not in (0, len(d)):
        raise ValueError(f"weights has {len(w)} entries but the batch {len(d)} rows")
    value = loss_kernel(code, _input(Z, dt), labels, Y, d, w, numba.get_num_threads())
    _write_back(dZ, d)
    return float(value)


@serialised
def mse(Yhat, Y, dYhat, weights=None):
    """L = Σ wᵢ Σ_outputs ½(ŷ − y)² / Σ wᵢ (the batch mean without weights); writes
    dYhat = wᵢ(ŷ − y)/Σw."""
    return _loss(MSE, Yhat, _NO_LABELS, _input(Y, _dtype(dYhat)), dYhat, weights)


@serialised
def softmax_cross_entropy(Z, labels, dZ, weights=None):
    """L = Σ wᵢ (log Σ_k e^z_k − z_y) / Σ wᵢ; writes dZ = wᵢ(softmax(z) − onehot(y))/Σw."""
    return _loss(CROSS_ENTROPY, Z, _input(labels, np.int64), _EMPTY[_dtype(dZ)][0],
                 dZ, weights)


@serialised
def sigmoid_binary_cross_entropy(Z, Y, dZ, weights=None):
    """L = Σ wᵢ Σ_outputs [−y log σ(z) − (1−y) log(1−σ(z))] / Σ wᵢ; writes
    dZ = wᵢ(σ(z) − y)/Σw."""
    return _loss(BINARY_CROSS_ENTROPY, Z, _NO_LABELS, _input(Y, _dtype(dZ)), dZ, weights)


@serialised
def dropout(X, p, key, out, rows=None):
    """out = X ⊙ mask / (1 − p), the counter-based mask of ``key`` (fastnn.kernels); ``rows``
    numbers the rows in their minibatch (default 0, 1, …)."""
    dt = _dtype(out)
    o = _output(out, dt)
    r = _NO_LABELS if rows is None else _input(rows, np.int64).reshape(-1)
    dropout_kernel(_input(X, dt), dropout_threshold(p), 1.0 / (1.0 - p), int(key), o, r,
                   numba.get_num_threads())
    _write_back(out, o)


def _update(code, params, grads, s1, s2, lr, mu_or_b1=0.0, b2=0.0, eps=0.0, weight_decay=0.0,
            nesterov=False, t=1):
    dt = _dtype(params)
    p = _output(params, dt)
    none = _EMPTY[dt][1]
    states = [none if s is None else _output(s, dt) for s in (s1, s2)]
    hyper = np.array([lr, mu_or_b1, b2, eps, weight_decay, float(nesterov)], np.float64)
    update_kernel(code, p, _input(grads, dt), states[0], states[1], hyper, int(t))
    for target, result in ((params, p), (s1, states[0]), (s2, states[1])):
        if target is not None:
            _write_back(target, result)


@serialised
def sgd(params, grads, lr, weight_decay=0.0):
    """w ← w − η (∂L/∂w + λw), in place."""
    _update(SGD, params, grads, None, None, lr, weight_decay=weight_decay)


@serialised
def sgd_momentum(params, grads, velocity, lr, momentum, nesterov=False, weight_decay=0.0):
    """g = ∂L/∂w + λw; v ← μv + g; w ← w − η v (Nesterov: w ← w − η (g + μv)), in place."""
    _update(MOMENTUM, params, grads, velocity, None, lr, momentum, weight_decay=weight_decay,
            nesterov=nesterov)


@serialised
def adam(params, grads, m, v, lr, beta1, beta2, eps, t, weight_decay=0.0):
    """Adam with L2 weight decay in the gradient, in place; ``t`` is the 1-based step."""
    _update(ADAM, params, grads, m, v, lr, beta1, beta2, eps, weight_decay, t=t)


@serialised
def adamw(params, grads, m, v, lr, beta1, beta2, eps, t, weight_decay):
    """AdamW (decoupled weight decay), in place; ``t`` is the 1-based step."""
    _update(ADAMW, params, grads, m, v, lr, beta1, beta2, eps, weight_decay, t=t)


@serialised
def rmsprop(params, grads, square_avg, velocity, lr, alpha, eps, momentum=0.0,
            weight_decay=0.0):
    """RMSprop (centered=False), in place; ``velocity`` is used only with momentum."""
    _update(RMSPROP, params, grads, square_avg, velocity if momentum else None, lr, momentum,
            alpha, eps, weight_decay)


@serialised
def batchnorm_forward(X, gamma, beta, running_mean, running_var, momentum, eps, training,
                      out, xhat, inv_std):
    """Batch normalisation of X (batch, n) per feature (see the reference)."""
    dt = _dtype(out)
    bufs = [_output(a, dt) for a in (running_mean, running_var, out, xhat, inv_std)]
    bn_forward_kernel(_input(X, dt), _input(gamma, dt), _input(beta, dt), bufs[0], bufs[1],
                      float(momentum), float(eps), bool(training), bufs[2], bufs[3], bufs[4])
    for target, result in zip((running_mean, running_var, out, xhat, inv_std), bufs):
        _write_back(target, result)


@serialised
def batchnorm_backward(dY, xhat, inv_std, gamma, dX, dgamma, dbeta):
    """Backward of training-mode batch normalisation; writes dX, dgamma, dbeta."""
    dt = _dtype(dX)
    bufs = [_output(a, dt) for a in (dX, dgamma, dbeta)]
    bn_backward_kernel(_input(dY, dt), _input(xhat, dt), _input(inv_std, dt),
                       _input(gamma, dt), bufs[0], bufs[1], bufs[2])
    for target, result in zip((dX, dgamma, dbeta), bufs):
        _write_back(target, result)
