"""The kernel interface on device arrays: each function sizes a grid and launches kernels.

Same names, signatures and semantics as the NumPy reference, except that arrays are Numba
device arrays that stay on the GPU, losses add into a device ``totals`` vector instead of
returning a float (so a training epoch never waits for the host), and ``dense_backward`` takes
a ``row_dot`` workspace (batch,) that softmax layers need. The host-array interface in
:mod:`.host` and the fused trainer in :mod:`.trainer` are both built on these.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from .. import (ADAM, ADAMW, BINARY_CROSS_ENTROPY, CLIP_EPS, CROSS_ENTROPY, GRAD_WRITE, IDENTITY,
                MOMENTUM, MSE, NEEDS_PREACTIVATION, RMSPROP, SGD, SOFTMAX, adam_scalars,
                dropout_threshold)
from . import cuda_kernels as K

#: outputs per matmul thread along each axis: blocks compute (16·THREAD_TILE)² outputs
THREAD_TILE = 4


def _blocks(n: int, per_block: int) -> int:
    """Blocks needed to cover n items, at least one (a kernel launch needs a non-empty grid)."""
    return max(1, -(-n // per_block))


@functools.cache
def _placeholder(dtype) -> cuda.devicearray.DeviceNDArray:
    """A one-element device vector passed for an array argument a kernel does not read
    (no bias in the backward matmuls, no row sums without softmax)."""
    return cuda.device_array(1, dtype)


def matmul(A, B, trans_a: bool, trans_b: bool, C, bias=None, act: int = IDENTITY,
           thread_tile: int = THREAD_TILE, Z=None) -> None:
    """C = f(op(A) @ op(B) [+ bias]), op(M) = Mᵀ when its flag is set; softmax is not applied
    here (see :func:`dense_forward`); Z receives the pre-activation for GELU and SiLU."""
    M, N = C.shape
    tile = K.MATMUL_BLOCK[0] * thread_tile
    use_bias = bias is not None
    K.matmul_kernel(thread_tile)[(_blocks(N, tile), _blocks(M, tile)), K.MATMUL_BLOCK](
        A, B, trans_a, trans_b, bias if use_bias else _placeholder(C.dtype), use_bias, act, C,
        _preactivations(act, Z, C))


def _preactivations(act: int, Z, placeholder):
    """Z for the activations that keep z (required there), else a placeholder not read."""
    if act not in NEEDS_PREACTIVATION:
        return placeholder
    if Z is None:
        raise ValueError(f"activation code {act} needs the pre-activation buffer Z")
    return Z


def dense_forward(X, W, b, act: int, out, Z=None) -> None:
    """out = f(X @ W + b), bias and element-wise activation fused into the matmul (Z receives
    z for GELU and SiLU)."""
    matmul(X, W, False, False, out, b, act, Z=Z)
    if act == SOFTMAX:
        K.softmax_rows[_blocks(len(out), K.THREADS_1D), K.THREADS_1D](out)


def dense_backward(dA, X, W, A, act: int, dX, dW, db, row_dot=None, Z=None) -> None:
    """dA ← dZ = dA ⊙ f′ with db = Σ dZ in one kernel, then dW = Xᵀ dZ and (unless dX is
    None) dX = dZ Wᵀ with the same matmul kernel. Softmax layers need ``row_dot`` (batch,);
    it is allocated here when not given. GELU and SiLU read f′ from the pre-activation Z."""
    if act == SOFTMAX:
        if row_dot is None:
            row_dot = cuda.device_array(len(A), A.dtype)
        K.row_dots[_blocks(len(A), K.THREADS_1D), K.THREADS_1D](dA, A, row_dot)
    else:
        row_dot = _placeholder(A.dtype)
    width = A.shape[1]
    K.activation_backward[_blocks(width, K.COLUMN_BLOCK[0]), K.COLUMN_BLOCK](
        dA, A, act, row_dot, db, _preactivations(act, Z, A))
    matmul(X, dA, True, False, dW)                               # ∂L/∂W = Xᵀ dZ
    if dX is not None:
        matmul(dA, W, False, True, dX)                           # ∂L/∂x = dZ Wᵀ


#: loss code (fastnn.kernels) -> kernel(Z, targets, dZ, totals)
LOSS_KERNELS = {
    MSE: K.mse,
    CROSS_ENTROPY: K.softmax_cross_entropy,
    BINARY_CROSS_ENTROPY: K.sigmoid_binary_cross_entropy,
}


def loss(code: int, Z, targets, dZ, totals, w=None, inv_mass: float | None = None) -> None:
    """Write the loss gradient dZ and add (Σ_rows wᵢ × loss, rows predicted right) to totals.

    ``targets`` is (n, k) for mse and binary cross-entropy and the labels as a column (n, 1)
    for softmax cross-entropy; ``totals`` is a float64 device vector of 2. ``w`` (n,) float64
    weights the rows (None: all 1) and ``inv_mass`` is 1/Σ w (default 1/n, the plain mean).
    """
    weighted = w is not None
    LOSS_KERNELS[code][1, K.LOSS_BLOCK](
        Z, targets, dZ, totals, w if weighted else _placeholder(float), weighted,
        float(1.0 / len(Z) if inv_mass is None else inv_mass))


def dropout(X, p: float, key: int, out, mode: int = GRAD_WRITE, rows=None) -> None:
    """out = X ⊙ mask / (1 − p) (or += with mode GRAD_ADD), the counter-based mask of
    ``key`` (fastnn.kernels); ``rows`` (device int64) numbers the rows in their minibatch."""
    K.dropout[_grid_2d(*out.shape), K.COLUMN_BLOCK](
        X, dropout_threshold(p), out.dtype.type(1.0 / (1.0 - p)), int(key), int(mode), out,
        _placeholder(np.int64) if rows is None else rows, rows is not None)


def optimizer_step(rule: int, params, grads, s1, s2, lr: float, mu_or_beta1: float = 0.0,
                   beta2: float = 0.0, eps: float = 0.0, weight_decay: float = 0.0,
                   nesterov: bool = False, t: int = 1) -> None:
    """Launch the one optimizer kernel over the flat buffer (the plan's rule and hyper-
    parameters; unused state arrays may be None), scalars in the buffer's dtype."""
    scalar = params.dtype.type
    s1 = grads if s1 is None else s1
    s2 = grads if s2 is None else s2
    step_size, inv_root_c2 = adam_scalars(lr, mu_or_beta1, beta2, t) if rule in (
        ADAM, ADAMW) else (0.0, 0.0)
    K.optimizer_step[_blocks(params.size, K.THREADS_1D), K.THREADS_1D](
        rule, params, grads, s1, s2, scalar(lr), scalar(mu_or_beta1), scalar(beta2),
        scalar(eps), scalar(weight_decay), bool(nesterov), scalar(step_size),
        scalar(inv_root_c2))


def clip_grad_norm(grads, max_norm: float, scratch) -> None:
    """grads ← grads·min(1, max_norm/(‖grads‖₂ + CLIP_EPS)) on the device; ``scratch`` is a
    float64 device vector of 1 for the squared norm."""
    K.sum_squares[1, K.LOSS_BLOCK](grads, scratch)
    K.scale_to_norm[_blocks(grads.size, K.THREADS_1D), K.THREADS_1D](grads, scratch,
                                                                      float(max_norm), CLIP_EPS)


def sgd(params, grads, lr: float, weight_decay: float = 0.0) -> None:
    """w ← w − η (g + λw)."""
    optimizer_step(SGD, params, grads, None, None, lr, weight_decay=weight_decay)


def sgd_momentum(params, grads, velocity, lr: float, momentum: float, nesterov: bool = False,
                 weight_decay: float = 0.0) -> None:
    """v ← μv + g; w ← w − η v (Nesterov: η (g + μv)); g includes λw."""
    optimizer_step(MOMENTUM, params, grads, velocity, None, lr, momentum,
                   weight_decay=weight_decay, nesterov=nesterov)


def adam(params, grads, m, v, lr: float, beta1: float, beta2: float, eps: float, t: int,
         weight_decay: float = 0.0) -> None:
    """Adam with bias correction for the 1-based step ``t``, L2 decay in the gradient."""
    optimizer_step(ADAM, params, grads, m, v, lr, beta1, beta2, eps, weight_decay, t=t)


def adamw(params, grads, m, v, lr: float, beta1: float, beta2: float, eps: float, t: int,
          weight_decay: float) -> None:
    """AdamW: decoupled weight decay, then Adam's step."""
    optimizer_step(ADAMW, params, grads, m, v, lr, beta1, beta2, eps, weight_decay, t=t)


def rmsprop(params, grads, square_avg, velocity, lr: float, alpha: float, eps: float,
            momentum: float = 0.0, weight_decay: float = 0.0) -> None:
    """RMSprop (centered=False); ``velocity`` is read only with momentum."""
    optimizer_step(RMSPROP, params, grads, square_avg, velocity, lr, momentum, alpha, eps,
                   weight_decay)


def batchnorm_forward(X, gamma, beta, running_mean, running_var, momentum: float, eps: float,
                      training: bool, out, xhat, inv_std) -> None:
    """Batch normalisation per feature; see the reference for the formulas."""
    K.batchnorm_forward[_blocks(X.shape[1], K.COLUMN_BLOCK[0]), K.COLUMN_BLOCK](
        X, gamma, beta, running_mean, running_var, float(momentum), float(eps),
        bool(training), out, xhat, inv_std)


def batchnorm_backward(dY, xhat, inv_std, gamma, dX, dgamma, dbeta) -> None:
    """Backward of training-mode batch normalisation."""
    K.batchnorm_backward[_blocks(dY.shape[1], K.COLUMN_BLOCK[0]), K.COLUMN_BLOCK](
        dY, xhat, inv_std, gamma, dX, dgamma, dbeta)


def _grid_2d(rows: int, cols: int) -> tuple[int, int]:
    return _blocks(cols, K.COLUMN_BLOCK[0]), _blocks(rows, K.COLUMN_BLOCK[1])


def standardize(X, mean, std, out, backward: bool = False, mode: int = GRAD_WRITE) -> None:
    """out = (X − mean) / std, or for the backward pass out = X / std (``mode`` GRAD_ADD
    adds)."""
    K.standardize[_grid_2d(*out.shape), K.COLUMN_BLOCK](X, mean, std, bool(backward),
                                                        int(mode), out)


def add(X, Y, out) -> None:
    """out = X + Y."""
    K.add[_grid_2d(*out.shape), K.COLUMN_BLOCK](X, Y, out)


def gather_rows(X, Y, order, start: int, Xb, Yb) -> None:
    """Xb, Yb = rows order[start:start + len(Xb)] of X, Y (one launch for both)."""
    K.gather_rows[_grid_2d(len(Xb), max(Xb.shape[1], Yb.shape[1])), K.COLUMN_BLOCK](
        X, Y, order, start, Xb, Yb)
