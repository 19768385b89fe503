"""NumPy reference backend: the executable specification of the kernel interface.

Every function here reads like the formula it implements (one line per formula, the formula in
the comment). Compiled backends must match these results to the tolerances in DESIGN.md. This
module favours clarity over speed: it may allocate temporaries, the compiled backends may not.

Shapes: ``X (batch, in)``, ``W (in, out)``, ``b (out,)``, ``A``/``Z`` ``(batch, out)``.
"""
import numpy as np
from scipy.special import erf

from . import (ELU, GELU, GELU_TANH, GELU_TANH_C, GELU_TANH_K, GOLDEN, IDENTITY, LEAKY_RELU,
               LEAKY_SLOPE, MASK32, NEEDS_PREACTIVATION, RELU, SELU, SELU_ALPHA, SELU_SCALE,
               SIGMOID, SILU, SOFTMAX, SOFTPLUS, SOFTPLUS_THRESHOLD, TANH, adam_scalars,
               dropout_threshold, hash32)

_SQRT_HALF = np.sqrt(0.5)
_INV_SQRT_2PI = 1 / np.sqrt(2 * np.pi)


def _sigmoid(Z):
    """Overflow-free logistic function: σ(z) = 1/(1+e^−z) = e^z/(1+e^z)."""
    E = np.exp(-np.abs(Z))                                   # e^−|z| never overflows
    return np.where(Z >= 0, 1.0 / (1.0 + E), E / (1.0 + E)).astype(Z.dtype, copy=False)


def _activate(Z, act):
    """Apply f in place to Z (batch, out) and return it."""
    if act == SIGMOID:
        Z[...] = _sigmoid(Z)                                 # a = 1/(1+e^−z)
    elif act == TANH:
        np.tanh(Z, out=Z)                                    # a = tanh z
    elif act == RELU:
        np.maximum(Z, 0, out=Z)                              # a = max(0, z)
    elif act == LEAKY_RELU:
        np.multiply(Z, np.where(Z > 0, 1.0, LEAKY_SLOPE).astype(Z.dtype), out=Z)  # a = z or 0.01 z
    elif act == ELU:
        Z[...] = np.where(Z > 0, Z, np.expm1(np.minimum(Z, 0)))             # z or e^z − 1
    elif act == SELU:
        Z[...] = SELU_SCALE * np.where(Z > 0, Z, SELU_ALPHA * np.expm1(np.minimum(Z, 0)))
    elif act == SOFTPLUS:                                    # log(1 + e^z), z above 20
        Z[...] = np.where(Z > SOFTPLUS_THRESHOLD, Z,
                          np.log1p(np.exp(np.minimum(Z, SOFTPLUS_THRESHOLD))))
    elif act == GELU:
        Z[...] = 0.5 * Z * (1 + erf(Z * _SQRT_HALF))          # a = z Φ(z)
    elif act == GELU_TANH:                                   # a = ½z(1 + tanh(c(z + k z³)))
        Z[...] = 0.5 * Z * (1 + np.tanh(GELU_TANH_C * (Z + GELU_TANH_K * Z ** 3)))
    elif act == SILU:
        Z[...] = Z * _sigmoid(Z)                             # a = z σ(z)
    elif act == SOFTMAX:
        Z -= Z.max(axis=1, keepdims=True)                    # softmax(z) = softmax(z − max z)
        np.exp(Z, out=Z)                                     # e^(z_j − max z)
        Z /= Z.sum(axis=1, keepdims=True)                    # a_j = e^z_j / Σ_k e^z_k
    elif act != IDENTITY:
        raise ValueError(f"unknown activation code {act}")
    return Z


def _activation_grad(dA, A, act, Z=None):
    """dZ = dA ⊙ f′(z), with f′ written in terms of the saved output a = f(z), or of the
    saved pre-activation z for the activations that need it."""
    if act == GELU:                                          # Φ(z) + z φ(z)
        return dA * (0.5 * (1 + erf(Z * _SQRT_HALF)) + Z * _INV_SQRT_2PI * np.exp(-0.5 * Z * Z))
    if act == GELU_TANH:                                     # ½(1 + t) + ½z(1 − t²) c(1 + 3k z²)
        t = np.tanh(GELU_TANH_C * (Z + GELU_TANH_K * Z ** 3))
        return dA * (0.5 * (1 + t)
                     + 0.5 * Z * (1 - t * t) * GELU_TANH_C * (1 + 3 * GELU_TANH_K * Z * Z))
    if act == SILU:                                          # σ(z)(1 + z(1 − σ(z)))
        s = _sigmoid(Z)
        return dA * s * (1 + Z * (1 - s))
    if act == IDENTITY:
        return dA                                            # f′ = 1
    if act == SIGMOID:
        return dA * A * (1 - A)                              # σ′ = a(1 − a)
    if act == TANH:
        return dA * (1 - A * A)                              # tanh′ = 1 − a²
    if act == RELU:
        return dA * (A > 0)                                  # ReLU′ = [a > 0]
    if act == LEAKY_RELU:
        return dA * np.where(A > 0, 1.0, LEAKY_SLOPE)        # leaky′ = 1 or 0.01
    if act == ELU:
        return dA * np.where(A > 0, 1.0, A + 1)              # ELU′ = 1 or e^z = a + 1
    if act == SELU:                                          # λ or λα e^z = a + λα
        return dA * np.where(A > 0, SELU_SCALE, A + SELU_SCALE * SELU_ALPHA)
    if act == SOFTPLUS:                                      # σ(z) = 1 − e^−a, 1 above 20
        return dA * np.where(A > SOFTPLUS_THRESHOLD, 1.0, -np.expm1(-A))
    if act == SOFTMAX:
        # ∂L/∂z_j = a_j(∂L/∂a_j − Σ_k a_k ∂L/∂a_k)
        return A * (dA - (dA * A).sum(axis=1, keepdims=True))
    raise ValueError(f"unknown activation code {act}")


def _require_z(act, Z, kernel):
    if act in NEEDS_PREACTIVATION and Z is None:
        raise ValueError(f"{kernel}: activation code {act} needs the pre-activation buffer Z")


def dense_forward(X, W, b, act, out, Z=None):
    """out = f(X @ W + b); X (batch, in), W (in, out), b (out,), out (batch, out). For the
    activations in NEEDS_PREACTIVATION, Z (batch, out) receives z = X @ W + b."""
    _require_z(act, Z, "dense_forward")
    np.matmul(X, W, out=out)                                 # z = W·x, one row per sample
    out += b                                                 # z = W·x + b
    if act in NEEDS_PREACTIVATION:
        Z[...] = out                                         # kept for f′(z)
    _activate(out, act)                                      # a = f(z)


def dense_backward(dA, X, W, A, act, dX, dW, db, Z=None):
    """Gradients of a dense layer from ∂L/∂a; dA is overwritten with dZ = ∂L/∂z.

    dW (in, out), db (out,) are written; dX (batch, in) is written unless it is None (the
    first layer does not need it). Z is the forward pass's pre-activation, needed by the
    activations in NEEDS_PREACTIVATION only.
    """
    _require_z(act, Z, "dense_backward")
    dA[...] = _activation_grad(dA, A, act, Z)                # dZ = ∂L/∂a ⊙ f′(z)
    dZ = dA
    np.matmul(X.T, dZ, out=dW)                               # ∂L/∂W = Xᵀ dZ
    dZ.sum(axis=0, out=db)                                   # ∂L/∂b = Σ_batch dZ
    if dX is not None:
        np.matmul(dZ, W.T, out=dX)                           # ∂L/∂x = dZ Wᵀ


def _row_weights(weights, n):
    """(w (n, 1), 1/Σw) of a batch's rows: ones and 1/n without weights; 1/Σw is 0 when the
    weights sum to 0, so such a batch has loss 0 and gradient 0."""
    if weights is None:
        return np.ones((n, 1)), 1.0 / n
    w = np.asarray(weights, np.float64).reshape(n, 1)
    mass = w.sum()
    return w, (1.0 / mass if mass > 0 else 0.0)


def mse(Yhat, Y, dYhat, weights=None):
    """L = Σ_rows wᵢ Σ_outputs ½(ŷ − y)² / Σ wᵢ (wᵢ = 1 without weights: the mean over the
    batch); writes dYhat = ∂L/∂ŷ = wᵢ(ŷ − y)/Σw."""
    w, inv_mass = _row_weights(weights, Yhat.shape[0])
    R = Yhat - Y                                             # residual ŷ − y
    dYhat[...] = R * (w * inv_mass)                          # ∂L/∂ŷ = w(ŷ − y)/Σw
    return float(0.5 * np.sum(w * R * R) * inv_mass)         # L = Σ w ½(ŷ − y)² / Σw


def softmax_cross_entropy(Z, labels, dZ, weights=None):
    """L = Σ wᵢ (log Σ_k e^z_k − z_y) / Σ wᵢ over logits Z (the batch mean without weights);
    writes dZ = wᵢ(softmax(z) − onehot(y))/Σw.

    ``labels`` are integers in [0, Z.shape[1]).
    """
    n = Z.shape[0]
    w, inv_mass = _row_weights(weights, n)
    rows = np.arange(n)
    m = Z.max(axis=1, keepdims=True)                         # shift by max z for stability
    lse = m[:, 0] + np.log(np.exp(Z - m).sum(axis=1))        # log Σ e^z = m + log Σ e^(z−m)
    dZ[...] = np.exp(Z - lse[:, None])                       # p = softmax(z) = e^(z − lse)
    dZ[rows, labels] -= 1                                    # p − onehot(y)
    dZ *= w * inv_mass                                       # ∂L/∂z = w(p − onehot(y))/Σw
    return float(np.sum(w[:, 0] * (lse - Z[rows, labels])) * inv_mass)   # Σ w(lse − z_y)/Σw


def sigmoid_binary_cross_entropy(Z, Y, dZ, weights=None):
    """L = Σ wᵢ Σ_outputs [−y log σ(z) − (1−y) log(1−σ(z))] / Σ wᵢ over logits Z (batch, k)
    (the batch mean without weights).

    Written in the form that is stable for any |z|: max(z, 0) − z·y + log(1 + e^−|z|).
    Writes dZ = wᵢ(σ(z) − y)/Σw.
    """
    w, inv_mass = _row_weights(weights, Z.shape[0])
    dZ[...] = (_sigmoid(Z) - Y) * (w * inv_mass)             # ∂L/∂z = w(σ(z) − y)/Σw
    loss = np.maximum(Z, 0) - Z * Y + np.log1p(np.exp(-np.abs(Z)))  # −y log σ − (1−y) log(1−σ)
    return float(np.sum(w * loss) * inv_mass)


def dropout_mask(shape, p, key, rows=None):
    """The keep mask (len, n) of a minibatch's Dropout draws (see fastnn.kernels): element
    (i, j) is kept when hash32(((rᵢ·n + j)·GOLDEN mod 2³²) XOR key) ≥ p·2³², rᵢ = rows[i]
    (default i)."""
    length, n = shape
    r = np.arange(length) if rows is None else np.asarray(rows)
    index = r.astype(np.uint64)[:, None] * np.uint64(n) + np.arange(n, dtype=np.uint64)
    draws = hash32(((index * np.uint64(GOLDEN)) & np.uint64(MASK32)) ^ np.uint64(key))
    return draws >= np.uint64(dropout_threshold(p))


def dropout(X, p, key, out, rows=None):
    """Inverted dropout with the counter-based mask of ``key``: out = X ⊙ mask / (1 − p).
    Its backward pass is the same call on ∂L/∂out (the mask is recomputed, not stored).
    ``rows``: each row's number in its minibatch (default 0, 1, …)."""
    keep = dropout_mask(X.shape, p, key, rows)
    out[...] = np.where(keep, X / (1 - p), 0)                # survivors scaled by 1/(1−p)


def sgd(params, grads, lr, weight_decay=0.0):
    """Plain gradient descent, in place: w ← w − η (∂L/∂w + λw)."""
    g = grads + weight_decay * params                        # L2 added to the gradient
    params -= lr * g                                         # w ← w − η g


def sgd_momentum(params, grads, velocity, lr, momentum, nesterov=False, weight_decay=0.0):
    """Momentum, in place, as torch.optim.SGD (dampening 0): g = ∂L/∂w + λw; v ← μv + g;
    w ← w − η v, or with Nesterov w ← w − η (g + μv)."""
    g = grads + weight_decay * params
    velocity *= momentum                                     # μv
    velocity += g                                            # v = μv + g
    params -= lr * (g + momentum * velocity if nesterov else velocity)


def _adam_step(params, g, m, v, lr, beta1, beta2, eps, t):
    """Update the moments in place, then w ← w − η m̂/(√v̂ + ε) with m̂ = m/(1−β₁ᵗ),
    v̂ = v/(1−β₂ᵗ), arranged as torch.optim.Adam does: w ← w − η/(1−β₁ᵗ) · m/(√v/√(1−β₂ᵗ) + ε),
    the two corrections folded into scalars (one division and one square root per entry;
    the compiled backends do the same, multiplying by 1/√(1−β₂ᵗ))."""
    m *= beta1
    m += (1 - beta1) * g                                     # m ← β₁m + (1−β₁)g
    v *= beta2
    v += (1 - beta2) * g * g                                 # v ← β₂v + (1−β₂)g²
    step_size, inv_root_c2 = adam_scalars(lr, beta1, beta2, t)
    params -= step_size * (m / (np.sqrt(v) * inv_root_c2 + eps))


def adam(params, grads, m, v, lr, beta1, beta2, eps, t, weight_decay=0.0):
    """Adam (Kingma & Ba), in place, as torch.optim.Adam: L2 weight decay added to the
    gradient; ``t`` is the 1-based step count for bias correction."""
    _adam_step(params, grads + weight_decay * params, m, v, lr, beta1, beta2, eps, t)


def adamw(params, grads, m, v, lr, beta1, beta2, eps, t, weight_decay):
    """AdamW (Loshchilov & Hutter), in place, as torch.optim.AdamW: decoupled weight decay
    w ← w(1 − ηλ), then the Adam step on the plain gradient."""
    params *= 1 - lr * weight_decay                          # w ← w(1 − ηλ)
    _adam_step(params, grads, m, v, lr, beta1, beta2, eps, t)


def rmsprop(params, grads, square_avg, velocity, lr, alpha, eps, momentum=0.0,
            weight_decay=0.0):
    """RMSprop, in place, as torch.optim.RMSprop (centered=False): g = ∂L/∂w + λw;
    s ← αs + (1−α)g²; with momentum v ← μv + g/(√s + ε), w ← w − η v; else
    w ← w − η g/(√s + ε). ``velocity`` is unused (may be None) without momentum."""
    g = grads + weight_decay * params
    square_avg *= alpha
    square_avg += (1 - alpha) * g * g                        # s ← αs + (1−α)g²
    step = g / (np.sqrt(square_avg) + eps)                   # g/(√s + ε)
    if momentum:
        velocity *= momentum
        velocity += step                                     # v ← μv + g/(√s + ε)
        step = velocity
    params -= lr * step


def batchnorm_forward(X, gamma, beta, running_mean, running_var, momentum, eps, training,
                      out, xhat, inv_std):
    """Batch normalisation of X (batch, n) per feature.

    Training: normalise with the batch statistics and update the running ones,
    r ← (1−momentum) r + momentum·stat (running variance uses the unbiased estimate).
    Evaluation: normalise with the running statistics. Writes out, xhat (batch, n) and
    inv_std (n,) for the backward pass.
    """
    if training:
        n = X.shape[0]
        mean = X.mean(axis=0)                                # μ = mean_batch x
        var = X.var(axis=0)                                  # σ² = mean_batch (x − μ)²
        running_mean *= 1 - momentum
        running_mean += momentum * mean                      # r_μ ← (1−m) r_μ + m μ
        running_var *= 1 - momentum
        running_var += momentum * var * (n / max(n - 1, 1))  # r_σ² ← (1−m) r_σ² + m σ² n/(n−1)
    else:
        mean, var = running_mean, running_var
    inv_std[...] = 1 / np.sqrt(var + eps)                    # 1/√(σ² + ε)
    xhat[...] = (X - mean) * inv_std                         # x̂ = (x − μ)/√(σ² + ε)
    out[...] = gamma * xhat + beta                           # y = γ x̂ + β


def batchnorm_backward(dY, xhat, inv_std, gamma, dX, dgamma, dbeta):
    """Backward of training-mode batch normalisation; writes dX, dgamma, dbeta."""
    n = dY.shape[0]
    dbeta[...] = dY.sum(axis=0)                              # ∂L/∂β = Σ dy
    dgamma[...] = (dY * xhat).sum(axis=0)                    # ∂L/∂γ = Σ dy x̂
    dxhat = dY * gamma                                       # ∂L/∂x̂ = γ dy
    dX[...] = inv_std / n * (n * dxhat - dxhat.sum(axis=0)   # ∂L/∂x = (1/(nσ))(n dx̂ − Σdx̂
                             - xhat * (dxhat * xhat).sum(axis=0))  #        − x̂ Σ dx̂ x̂)
