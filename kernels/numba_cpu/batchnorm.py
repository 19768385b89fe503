"""Batch normalisation, one feature (column) per parallel iteration.

Statistics are accumulated in float64 so long batches in float32 match NumPy's pairwise sums.
"""
import math

from numba import njit, prange

from ._split import MIN_CHUNK_WORK


@njit(inline="always", error_model="numpy")
def bn_forward_col(j, X, gamma, beta, running_mean, running_var, momentum, eps, training,
                   out, xhat, inv_std):
    """Normalise feature j of X (batch, n); in training also update its running statistics."""
    n = X.shape[0]
    dt = X.dtype.type
    if training:
        s = 0.0
        for i in range(n):
            s += X[i, j]
        mean = s / n                                      # μ = mean_batch x
        s = 0.0
        for i in range(n):
            s += (X[i, j] - mean) ** 2
        var = s / n                                       # σ² = mean_batch (x − μ)²
        running_mean[j] = (1 - momentum) * running_mean[j] + momentum * mean
        running_var[j] = (1 - momentum) * running_var[j] + momentum * var * (n / max(n - 1, 1))
    else:
        mean, var = float(running_mean[j]), float(running_var[j])
    inv = 1 / math.sqrt(var + eps)                        # 1/√(σ² + ε)
    inv_std[j] = inv
    g, b = gamma[j], beta[j]
    for i in range(n):
        xh = dt((X[i, j] - mean) * inv)                   # x̂ = (x − μ)/√(σ² + ε)
        xhat[i, j] = xh
        out[i, j] = g * xh + b                            # y = γ x̂ + β


@njit(inline="always", error_model="numpy")
def bn_backward_col(j, dY, xhat, inv_std, gamma, dX, dX_mode, dgamma, dbeta):
    """Gradients of training-mode batch norm for feature j. dX_mode: 0 skip, 1 write, 2 add."""
    n = dY.shape[0]
    sb = sg = 0.0
    for i in range(n):
        sb += dY[i, j]                                    # ∂L/∂β = Σ dy
        sg += dY[i, j] * xhat[i, j]                       # ∂L/∂γ = Σ dy x̂
    dbeta[j], dgamma[j] = sb, sg
    if dX_mode == 0:
        return
    g, inv = float(gamma[j]), float(inv_std[j])
    for i in range(n):                                    # ∂L/∂x = (γ/(nσ))(n dy − Σdy − x̂ Σdy x̂)
        dx = inv / n * (n * g * dY[i, j] - g * sb - xhat[i, j] * g * sg)
        if dX_mode == 2:
            dX[i, j] += dx
        else:
            dX[i, j] = dx


@njit(parallel=True, cache=True, error_model="numpy")
def bn_forward_kernel(X, gamma, beta, running_mean, running_var, momentum, eps, training,
                      out, xhat, inv_std):
    if 4 * X.size < MIN_CHUNK_WORK:                       # ≈ 4 passes per element
        for j in range(X.shape[1]):
            bn_forward_col(j, X, gamma, beta, running_mean, running_var, momentum, eps,
                           training, out, xhat, inv_std)
    else:
        for j in prange(X.shape[1]):
            bn_forward_col(j, X, gamma, beta, running_mean, running_var, momentum, eps,
                           training, out, xhat, inv_std)


@njit(parallel=True, cache=True, error_model="numpy")
def bn_backward_kernel(dY, xhat, inv_std, gamma, dX, dgamma, dbeta):
    if 4 * dY.size < MIN_CHUNK_WORK:
        for j in range(dY.shape[1]):
            bn_backward_col(j, dY, xhat, inv_std, gamma, dX, 1, dgamma, dbeta)
    else:
        for j in prange(dY.shape[1]):
            bn_backward_col(j, dY, xhat, inv_std, gamma, dX, 1, dgamma, dbeta)
