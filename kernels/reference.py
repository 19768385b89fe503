"""NumPy reference backend: the executable specification of the kernel interface.

Every function here reads like the formula it implements (one line per formula, the formula in
the comment). Compiled backends must match these results to the tolerances in DESIGN.md. This
module favours clarity over speed: it may allocate temporaries, the compiled backends may not.

Shapes: ``X (batch, in)``, ``W (in, out)``, ``b (out,)``, ``A``/``Z`` ``(batch, out)``.
"""
import numpy as np

from . import (ELU, IDENTITY, LEAKY_RELU, LEAKY_SLOPE, RELU, SELU, SELU_ALPHA, SELU_SCALE, SIGMOID,
               SOFTMAX, SOFTPLUS, SOFTPLUS_THRESHOLD, TANH)


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
    elif act == SOFTMAX:
        Z -= Z.max(axis=1, keepdims=True)                    # softmax(z) = softmax(z − max z)
        np.exp(Z, out=Z)                                     # e^(z_j − max z)
        Z /= Z.sum(axis=1, keepdims=True)                    # a_j = e^z_j / Σ_k e^z_k
    elif act != IDENTITY:
        raise ValueError(f"unknown activation code {act}")
    return Z


def _activation_grad(dA, A, act):
    """dZ = dA ⊙ f′(z), with f′ written in terms of the saved output a = f(z)."""
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


def dense_forward(X, W, b, act, out):
    """out = f(X @ W + b); X (batch, in), W (in, out), b (out,), out (batch, out)."""
    np.matmul(X, W, out=out)                                 # z = W·x, one row per sample
    out += b                                                 # z = W·x + b
    _activate(out, act)                                      # a = f(z)


def dense_backward(dA, X, W, A, act, dX, dW, db):
    """Gradients of a dense layer from ∂L/∂a; dA is overwritten with dZ = ∂L/∂z.

    dW (in, out), db (out,) are written; dX (batch, in) is written unless it is None (the
    first layer does not need it).
    """
    dA[...] = _activation_grad(dA, A, act)                   # dZ = ∂L/∂a ⊙ f′(z)
    dZ = dA
    np.matmul(X.T, dZ, out=dW)                               # ∂L/∂W = Xᵀ dZ
    dZ.sum(axis=0, out=db)                                   # ∂L/∂b = Σ_batch dZ
    if dX is not None:
        np.matmul(dZ, W.T, out=dX)                           # ∂L/∂x = dZ Wᵀ


def mse(Yhat, Y, dYhat):
    """L = mean_batch Σ_outputs ½(ŷ − y)²; writes dYhat = ∂L/∂ŷ = (ŷ − y)/batch."""
    n = Yhat.shape[0]
    R = Yhat - Y                                             # residual ŷ − y
    dYhat[...] = R / n                                       # ∂L/∂ŷ = (ŷ − y)/n
    return float(0.5 * np.sum(R * R) / n)                    # L = (1/n) Σ ½(ŷ − y)²


def softmax_cross_entropy(Z, labels, dZ):
    """L = mean_batch(log Σ_k e^z_k − z_y) over logits Z; writes
    dZ = (softmax(z) − onehot(y))/batch.

    ``labels`` are integers in [0, Z.shape[1]).
    """
    n = Z.shape[0]
    rows = np.arange(n)
    m = Z.max(axis=1, keepdims=True)                         # shift by max z for stability
    lse = m[:, 0] + np.log(np.exp(Z - m).sum(axis=1))        # log Σ e^z = m + log Σ e^(z−m)
    dZ[...] = np.exp(Z - lse[:, None])                       # p = softmax(z) = e^(z − lse)
    dZ[rows, labels] -= 1                                    # p − onehot(y)
    dZ /= n                                                  # ∂L/∂z = (p − onehot(y))/n
    return float(np.mean(lse - Z[rows, labels]))             # L = mean(lse − z_y)


def sigmoid_binary_cross_entropy(Z, Y, dZ):
    """L = mean_batch Σ_outputs [−y log σ(z) − (1−y) log(1−σ(z))] over logits Z (batch, k).

    Written in the form that is stable for any |z|: max(z, 0) − z·y + log(1 + e^−|z|).
    Writes dZ = (σ(z) − y)/batch.
    """
    n = Z.shape[0]
    dZ[...] = (_sigmoid(Z) - Y) / n                          # ∂L/∂z = (σ(z) − y)/n
    loss = np.maximum(Z, 0) - Z * Y + np.log1p(np.exp(-np.abs(Z)))  # −y log σ − (1−y) log(1−σ)
    return float(np.sum(loss) / n)


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


def _adam_moments(g, m, v, beta1, beta2, t):
    """Update the moments in place; return the bias-corrected m̂, v̂."""
    m *= beta1
    m += (1 - beta1) * g                                     # m ← β₁m + (1−β₁)g
    v *= beta2
    v += (1 - beta2) * g * g                                 # v ← β₂v + (1−β₂)g²
    return m / (1 - beta1 ** t), v / (1 - beta2 ** t)        # m̂, v̂


def adam(params, grads, m, v, lr, beta1, beta2, eps, t, weight_decay=0.0):
    """Adam (Kingma & Ba), in place, as torch.optim.Adam: L2 weight decay added to the
    gradient; ``t`` is the 1-based step count for bias correction."""
    m_hat, v_hat = _adam_moments(grads + weight_decay * params, m, v, beta1, beta2, t)
    params -= lr * m_hat / (np.sqrt(v_hat) + eps)            # w ← w − η m̂/(√v̂ + ε)


def adamw(params, grads, m, v, lr, beta1, beta2, eps, t, weight_decay):
    """AdamW (Loshchilov & Hutter), in place, as torch.optim.AdamW: decoupled weight decay
    w ← w(1 − ηλ), then the Adam step on the plain gradient."""
    m_hat, v_hat = _adam_moments(grads, m, v, beta1, beta2, t)
    params *= 1 - lr * weight_decay                          # w ← w(1 − ηλ)
    params -= lr * m_hat / (np.sqrt(v_hat) + eps)            # w ← w − η m̂/(√v̂ + ε)


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
