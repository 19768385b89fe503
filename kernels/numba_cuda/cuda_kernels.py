"""The CUDA kernels of the numba_cuda backend, with the block shapes they are written for.

Every kernel works on device arrays and writes into buffers the caller allocated; the launch
configurations (grid sizing) live in :mod:`.ops`. Each kernel is correct at any shape: edge
blocks are guarded, so batch 1 and widths that are not multiples of a tile work.

Reductions (db, BatchNorm statistics, losses) sum in float64 in a fixed tree order inside one
block, so results are deterministic: no atomics.
"""
import functools
import math

from numba import cuda, float64

from .. import ADAMW, GOLDEN, GRAD_ADD, MASK32, MOMENTUM, RMSPROP, SGD, SOFTMAX
from .device import (accumulate_totals, activate, activation_grad, hash32_device,
                     keeps_preactivation, load_tile, sigmoid, sum_over_y)

#: matmul: 16 × 16 threads, each computing a THREAD_TILE × THREAD_TILE block of outputs
MATMUL_BLOCK = (16, 16)
#: matmul: depth of the shared-memory tiles of op(A) and op(B)
K_TILE = 16
#: column kernels (db, BatchNorm): 32 features per block, 8 threads walking the rows of each
COLUMN_BLOCK = (32, 8)
COLUMN_SCRATCH = (8, 32)
#: loss kernels: one block whose 256 threads walk the rows (threadIdx.y), then reduce
LOSS_BLOCK = (1, 256)
LOSS_SCRATCH = (256, 1)
#: one thread per element (optimizers) or per row (softmax); 2-D element grids use COLUMN_BLOCK
THREADS_1D = 256



@functools.cache
def matmul_kernel(thread_tile: int):
    """The tiled matmul kernel whose blocks compute (16·thread_tile)² outputs.

    ``matmul(A, B, trans_a, trans_b, bias, use_bias, act, C, Zs)`` computes
    C = f(op(A) @ op(B) [+ bias]) with op(M) = Mᵀ when its flag is set, so the forward pass
    (X W), dW = Xᵀ dZ and dX = dZ Wᵀ are the same kernel. Bias and activation are applied in
    the epilogue while the results are in registers (softmax, a row operation, is left to
    :func:`softmax_rows`); for GELU and SiLU, Zs receives z (for the others it is not
    read). Launch with MATMUL_BLOCK threads and a grid of (⌈N/tile⌉, ⌈M/tile⌉) blocks,
    tile = 16·thread_tile.
    """
    T = thread_tile
    TILE = MATMUL_BLOCK[0] * T
    STRIDE = MATMUL_BLOCK[0]                  # a thread's outputs are STRIDE apart: coalesced
    N_THREADS = MATMUL_BLOCK[0] * MATMUL_BLOCK[1]
    TILE_SHAPE = (K_TILE, TILE + 1)           # +1 column: fewer bank conflicts on stores
    ACC_SHAPE = (T, T)

    def matmul(A, B, trans_a, trans_b, bias, use_bias, act, C, Zs):
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        thread = ty * STRIDE + tx
        m0 = cuda.blockIdx.y * TILE
        n0 = cuda.blockIdx.x * TILE
        M, N = C.shape
        K = A.shape[0] if trans_a else A.shape[1]
        As = cuda.shared.array(TILE_SHAPE, A.dtype)          # As[k, m] = op(A)[m0 + m, k0 + k]
        Bs = cuda.shared.array(TILE_SHAPE, B.dtype)          # Bs[k, n] = op(B)[k0 + k, n0 + n]
        acc = cuda.local.array(ACC_SHAPE, C.dtype)
        a = cuda.local.array(T, C.dtype)
        b = cuda.local.array(T, C.dtype)
        for i in range(T):
            for j in range(T):
                acc[i, j] = 0
        for k0 in range(0, K, K_TILE):
            load_tile(A, not trans_a, k0, m0, As, K_TILE, TILE, thread, N_THREADS)
            load_tile(B, trans_b, k0, n0, Bs, K_TILE, TILE, thread, N_THREADS)
            cuda.syncthreads()
            for k in range(K_TILE):
                for i in range(T):
                    a[i] = As[k, ty + STRIDE * i]
                for j in range(T):
                    b[j] = Bs[k, tx + STRIDE * j]
                for i in range(T):
                    for j in range(T):
                        acc[i, j] += a[i] * b[j]                 # z = Σ_k op(A)_ik op(B)_kj
            cuda.syncthreads()
        for i in range(T):
            row = m0 + ty + STRIDE * i
            for j in range(T):
                col = n0 + tx + STRIDE * j
                if row < M and col < N:
                    z = acc[i, j]
                    if use_bias:
                        z += bias[col]                           # z = x·W + b
                    if keeps_preactivation(act):
                        Zs[row, col] = z                         # kept for f′(z)
                    C[row, col] = activate(z, act)               # a = f(z)

    return cuda.jit(matmul)


@cuda.jit
def softmax_rows(Z):
    """Z ← softmax(Z) per row, in place (the forward epilogue of a softmax layer); one thread
    per row."""
    row = cuda.grid(1)
    if row < Z.shape[0]:
        width = Z.shape[1]
        m = Z[row, 0]
        for j in range(1, width):
            m = max(m, Z[row, j])                                # softmax(z) = softmax(z − max z)
        s = 0.0
        for j in range(width):
            s += math.exp(Z[row, j] - m)
        for j in range(width):
            Z[row, j] = math.exp(Z[row, j] - m) / s              # a_j = e^z_j / Σ_k e^z_k


@cuda.jit
def row_dots(dA, A, out):
    """out[i] = Σ_j dA_ij A_ij: the row sum that softmax's derivative needs; one thread per
    row."""
    row = cuda.grid(1)
    if row < A.shape[0]:
        s = 0.0
        for j in range(A.shape[1]):
            s += dA[row, j] * A[row, j]
        out[row] = s


@cuda.jit
def activation_backward(dA, A, act, row_dot, db, Zs):
    """dA ← dZ = dA ⊙ f′ (from the saved output A, or the pre-activation Zs for GELU and
    SiLU) and db = Σ_rows dZ, fused.

    One block per strip of 32 columns (COLUMN_BLOCK); its 8 thread rows walk the batch and
    the column sums are reduced in the block. ``row_dot`` (from :func:`row_dots`) is read only
    for softmax.
    """
    scratch = cuda.shared.array(COLUMN_SCRATCH, float64)
    n, width = dA.shape
    col = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    partial = 0.0
    if col < width:
        for row in range(cuda.threadIdx.y, n, cuda.blockDim.y):
            s = row_dot[row] if act == SOFTMAX else 0.0
            a = Zs[row, col] if keeps_preactivation(act) else A[row, col]
            dA[row, col] = activation_grad(dA[row, col], a, act, s)  # dZ = dA ⊙ f′
            partial += dA[row, col]
    total = sum_over_y(scratch, partial)                         # ∂L/∂b = Σ_batch dZ
    if col < width and cuda.threadIdx.y == 0:
        db[col] = total


# The loss kernels weight row i by w[i] when ``weighted`` (else 1) and scale the gradient by
# inv_mass = 1/Σ w (1/n without weights): ∂L/∂z = wᵢ ∂lᵢ · inv_mass; totals[0] += Σ wᵢ lᵢ.

@cuda.jit
def softmax_cross_entropy(Z, labels, dZ, totals, w, weighted, inv_mass):
    """dZ = wᵢ(softmax(z) − onehot(y))·inv_mass from logits Z (n, k) and labels (n, 1);
    totals[0] += Σ_rows wᵢ(log Σ e^z − z_y), totals[1] += rows whose argmax is y.
    One block of LOSS_BLOCK threads."""
    scratch = cuda.shared.array(LOSS_SCRATCH, float64)
    n, k = Z.shape
    loss = 0.0
    n_right = 0.0
    for i in range(cuda.threadIdx.y, n, cuda.blockDim.y):
        wi = w[i] if weighted else 1.0
        share = wi * inv_mass
        y = labels[i, 0]
        m = Z[i, 0]
        best = 0
        for j in range(1, k):
            if Z[i, j] > m:                                      # first maximum, as argmax
                m = Z[i, j]
                best = j
        s = 0.0
        for j in range(k):
            s += math.exp(Z[i, j] - m)
        lse = m + math.log(s)                                    # log Σ e^z = m + log Σ e^(z−m)
        for j in range(k):
            p = math.exp(Z[i, j] - lse)                          # p = softmax(z)
            dZ[i, j] = (p - 1.0 if j == y else p) * share        # w(p − onehot(y))/Σw
        loss += wi * (lse - Z[i, y])                             # L_i = lse − z_y
        if best == y:
            n_right += 1.0
    accumulate_totals(scratch, totals, loss, n_right)


@cuda.jit
def sigmoid_binary_cross_entropy(Z, Y, dZ, totals, w, weighted, inv_mass):
    """dZ = wᵢ(σ(z) − y)·inv_mass from logits Z and targets Y (n, k); totals[0] += Σ wᵢ
    (max(z, 0) − zy + log(1 + e^−|z|)), totals[1] += rows whose every output is on the right
    side of z = 0. One block of LOSS_BLOCK threads."""
    scratch = cuda.shared.array(LOSS_SCRATCH, float64)
    n, k = Z.shape
    loss = 0.0
    n_right = 0.0
    for i in range(cuda.threadIdx.y, n, cuda.blockDim.y):
        wi = w[i] if weighted else 1.0
        share = wi * inv_mass
        row_right = True
        for j in range(k):
            z, y = Z[i, j], Y[i, j]
            dZ[i, j] = (sigmoid(z) - y) * share                  # ∂L/∂z = w(σ(z) − y)/Σw
            loss += wi * ((z if z > 0 else 0.0) - z * y + math.log1p(math.exp(-abs(z))))
            if (z > 0) != (y > 0.5):
                row_right = False
        if row_right:
            n_right += 1.0
    accumulate_totals(scratch, totals, loss, n_right)


@cuda.jit
def mse(Yhat, Y, dYhat, totals, w, weighted, inv_mass):
    """dYhat = wᵢ(ŷ − y)·inv_mass; totals[0] += Σ wᵢ ½(ŷ − y)². One block of LOSS_BLOCK
    threads."""
    scratch = cuda.shared.array(LOSS_SCRATCH, float64)
    n, k = Yhat.shape
    loss = 0.0
    for i in range(cuda.threadIdx.y, n, cuda.blockDim.y):
        wi = w[i] if weighted else 1.0
        share = wi * inv_mass
        for j in range(k):
            r = Yhat[i, j] - Y[i, j]                             # residual ŷ − y
            dYhat[i, j] = r * share                              # ∂L/∂ŷ = w(ŷ − y)/Σw
            loss += wi * 0.5 * r * r
    accumulate_totals(scratch, totals, loss, 0.0)


@cuda.jit
def optimizer_step(rule, params, grads, s1, s2, lr, a, b, eps, wd, nesterov, step_size,
                   inv_root_c2):
    """One update of the flat parameter buffer, one thread per entry; the formulas are
    fastnn.kernels.reference's. g = grad + wd·w except for ADAMW.

    SGD: w ← w − η g. MOMENTUM: s1 = v, a = μ: v ← μv + g; w ← w − η v, or η (g + μv) with
    ``nesterov``. ADAM / ADAMW: s1, s2 = m, v; a, b = β₁, β₂; step_size, inv_root_c2 =
    η/(1−β₁ᵗ), 1/√(1−β₂ᵗ) (fastnn.kernels.adam_scalars): m ← β₁m + (1−β₁)g;
    v ← β₂v + (1−β₂)g²; w ← w − step_size·m/(√v·inv_root_c2 + ε), AdamW after
    w ← w(1 − η·wd). RMSPROP: s1 = mean square, s2 = velocity (read when a = μ > 0), b = α:
    s ← αs + (1−α)g²; d = g/(√s + ε); with momentum v ← μv + d, d = v; w ← w − η d.
    """
    i = cuda.grid(1)
    if i < params.size:
        w = params[i]
        g = grads[i] if rule == ADAMW else grads[i] + wd * w
        if rule == SGD:
            params[i] = w - lr * g
        elif rule == MOMENTUM:
            v = a * s1[i] + g
            s1[i] = v
            params[i] = w - lr * (g + a * v if nesterov else v)
        elif rule == RMSPROP:
            s = b * s1[i] + (1 - b) * g * g
            s1[i] = s
            d = g / (math.sqrt(s) + eps)
            if a != 0:
                d = a * s2[i] + d
                s2[i] = d
            params[i] = w - lr * d
        else:
            m = a * s1[i] + (1 - a) * g
            v = b * s2[i] + (1 - b) * g * g
            s1[i] = m
            s2[i] = v
            if rule == ADAMW:
                w = w * (1 - lr * wd)
            params[i] = w - step_size * (m / (math.sqrt(v) * inv_root_c2 + eps))


@cuda.jit
def sum_squares(x, out):
    """out[0] = Σ x² over a flat vector, in float64; one block of LOSS_BLOCK threads, reduced
    in a fixed tree order."""
    scratch = cuda.shared.array(LOSS_SCRATCH, float64)
    s = 0.0
    for i in range(cuda.threadIdx.y, x.size, cuda.blockDim.y):
        s += x[i] * x[i]
    total = sum_over_y(scratch, s)
    if cuda.threadIdx.y == 0:
        out[0] = total


@cuda.jit
def scale_to_norm(x, sq, max_norm, eps):
    """x ← x·min(1, max_norm/(√sq[0] + eps)) (clip_grad_norm_), one thread per entry."""
    i = cuda.grid(1)
    if i < x.size:
        coef = max_norm / (math.sqrt(sq[0]) + eps)
        if coef < 1.0:
            x[i] = x[i] * coef


@cuda.jit
def batchnorm_forward(X, gamma, beta, running_mean, running_var, momentum, eps, training,
                      out, xhat, inv_std):
    """y = γ x̂ + β with x̂ = (x − μ)/√(σ² + ε), per feature (column) of X (n, features).

    Training: μ, σ² of the batch (two passes), and the running statistics are updated
    (r ← (1−momentum) r + momentum·stat, variance unbiased); evaluation: the running ones.
    One block per strip of 32 features (COLUMN_BLOCK).
    """
    scratch = cuda.shared.array(COLUMN_SCRATCH, float64)
    n = X.shape[0]
    col = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    valid = col < X.shape[1]
    first = cuda.threadIdx.y == 0
    mean = 0.0
    var = 0.0
    if training:
        s = 0.0
        if valid:
            for row in range(cuda.threadIdx.y, n, cuda.blockDim.y):
                s += X[row, col]
        mean = sum_over_y(scratch, s) / n                        # μ = mean_batch x
        q = 0.0
        if valid:
            for row in range(cuda.threadIdx.y, n, cuda.blockDim.y):
                d = X[row, col] - mean
                q += d * d
        var = sum_over_y(scratch, q) / n                         # σ² = mean_batch (x − μ)²
        if valid and first:
            running_mean[col] = (1 - momentum) * running_mean[col] + momentum * mean
            running_var[col] = ((1 - momentum) * running_var[col]
                                + momentum * var * n / max(n - 1, 1))
    elif valid:
        mean = running_mean[col]
        var = running_var[col]
    if valid:
        istd = 1.0 / math.sqrt(var + eps)                        # 1/√(σ² + ε)
        if first:
            inv_std[col] = istd
        for row in range(cuda.threadIdx.y, n, cuda.blockDim.y):
            xh = (X[row, col] - mean) * istd                     # x̂ = (x − μ)/√(σ² + ε)
            xhat[row, col] = xh
            out[row, col] = gamma[col] * xh + beta[col]          # y = γ x̂ + β


@cuda.jit
def batchnorm_backward(dY, xhat, inv_std, gamma, dX, dgamma, dbeta):
    """Backward of training-mode batch normalisation: dβ = Σ dy, dγ = Σ dy x̂,
    dx = (1/(nσ))(n dx̂ − Σ dx̂ − x̂ Σ dx̂ x̂) with dx̂ = γ dy. One block per strip of 32
    features (COLUMN_BLOCK)."""
    scratch = cuda.shared.array(COLUMN_SCRATCH, float64)
    n = dY.shape[0]
    col = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    valid = col < dY.shape[1]
    s_dy = 0.0
    s_dy_xhat = 0.0
    if valid:
        for row in range(cuda.threadIdx.y, n, cuda.blockDim.y):
            s_dy += dY[row, col]
            s_dy_xhat += dY[row, col] * xhat[row, col]
    s_dy = sum_over_y(scratch, s_dy)                             # ∂L/∂β = Σ dy
    s_dy_xhat = sum_over_y(scratch, s_dy_xhat)                   # ∂L/∂γ = Σ dy x̂
    if valid:
        if cuda.threadIdx.y == 0:
            dbeta[col] = s_dy
            dgamma[col] = s_dy_xhat
        g = gamma[col]
        scale = inv_std[col] / n
        for row in range(cuda.threadIdx.y, n, cuda.blockDim.y):  # Σ dx̂ = γ Σ dy, Σ dx̂ x̂ = γ Σ dy x̂
            dX[row, col] = scale * (n * g * dY[row, col] - g * s_dy
                                    - xhat[row, col] * g * s_dy_xhat)


@cuda.jit
def dropout(X, threshold, scale, key, mode, out, rows, use_rows):
    """out = X ⊙ mask · scale (or += with mode GRAD_ADD), the counter-based mask of ``key``
    (fastnn.kernels): element (i, j) kept when hash32(((rᵢ·n + j)·GOLDEN) XOR key) ≥
    threshold, rᵢ = rows[i] if ``use_rows`` else i; 2-D grid of COLUMN_BLOCK blocks."""
    j, i = cuda.grid(2)
    n = out.shape[1]
    if i < out.shape[0] and j < n:
        r = rows[i] if use_rows else i
        keep = hash32_device((((r * n + j) * GOLDEN) & MASK32) ^ key) >= threshold
        v = X[i, j] * scale if keep else 0.0
        if mode == GRAD_ADD:
            out[i, j] += v
        else:
            out[i, j] = v


@cuda.jit
def standardize(X, mean, std, backward, mode, out):
    """Forward: out = (X − mean) / std per column; backward: out = X / std (X is ∂L/∂y), or
    += with mode GRAD_ADD; 2-D grid of COLUMN_BLOCK blocks."""
    j, i = cuda.grid(2)
    if i < out.shape[0] and j < out.shape[1]:
        v = X[i, j] / std[j] if backward else (X[i, j] - mean[j]) / std[j]
        if mode == GRAD_ADD:
            out[i, j] += v
        else:
            out[i, j] = v


@cuda.jit
def add(X, Y, out):
    """out = X + Y element-wise (residual connections); 2-D grid of COLUMN_BLOCK blocks."""
    j, i = cuda.grid(2)
    if i < out.shape[0] and j < out.shape[1]:
        out[i, j] = X[i, j] + Y[i, j]


@cuda.jit
def gather_rows(X, Y, order, start, Xb, Yb):
    """Xb[i] = X[order[start + i]] and Yb[i] = Y[order[start + i]]: one minibatch gathered on
    the device; 2-D grid of COLUMN_BLOCK blocks over (max(columns), rows)."""
    j, i = cuda.grid(2)
    if i < Xb.shape[0]:
        src = order[start + i]
        if j < Xb.shape[1]:
            Xb[i, j] = X[src, j]
        if j < Yb.shape[1]:
            Yb[i, j] = Y[src, j]
