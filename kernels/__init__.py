"""fastnn's compute backends, installed as ``fastnn.kernels``.

Every backend module (``reference``, ``numba_cpu``, ``cython``, ``numba_cuda``) provides the
functions named in :data:`INTERFACE`, with the same signatures and the same semantics as the
NumPy reference, which is the executable specification the others are tested against.

Conventions shared by all backends
----------------------------------
* A batch is rows: ``X (batch, in)``, ``W (in, out)``, ``b (out,)``.
* Activations are small integer codes (:data:`ACTIVATIONS`) so compiled kernels can branch on
  them inside one kernel instead of existing in one copy per activation.
* Outputs are written into arrays the caller allocated (``out=`` style); kernels return only
  scalars (a loss value).
* ``dense_backward`` overwrites its ``dA`` argument with ``dZ = dA * f'(Z)``: the buffer is
  scratch the caller no longer needs, so no backend allocates inside a training step.
* Pre-activations: ``dense_forward(X, W, b, act, out, Z=None)`` and ``dense_backward(dA, X,
  W, A, act, dX, dW, db, Z=None)`` take the pre-activation z = X·W + b as an optional last
  argument, which they write (forward) and read (backward) for the activations in
  :data:`NEEDS_PREACTIVATION` (GELU, SiLU) only; it is required for those and ignored for the
  others, whose derivatives come from the output a.
* Weighted losses: every loss kernel takes optional per-row ``weights`` (batch,) and returns
  the weighted mean Σ wᵢ lᵢ / Σ wᵢ, its gradient scaled to match (a batch whose weights sum
  to 0 has loss 0 and gradient 0); without weights, the plain mean.
* ``dropout(X, p, key, out, rows=None)``: out = X ⊙ mask / (1 − p) with the counter-based
  mask of :func:`dropout_key` (the same on every backend); the backward pass is the same call
  on ∂L/∂out. ``rows`` (int64, one per row of X) numbers the rows in the minibatch they
  belong to (default 0, 1, …): a process holding some rows of a larger minibatch (data-
  parallel training) draws the masks those rows get in the whole minibatch.
* Kernels are leaves: nothing here imports fastnn's model-level modules. A compiled backend's
  ``make_trainer(plan)`` takes a training plan (built by ``fastnn.plan``: plain arrays and the
  codes defined below) and returns a fused trainer for it; its ``make_predictor(plan)`` takes
  an inference plan (``fastnn.plan.InferencePlan``) and returns a fused forward pass.
* Importing a backend changes no process setting; thread limits a kernel needs hold only for
  the duration of its call (``._threads``).
"""
import math

IDENTITY, SIGMOID, TANH, RELU, LEAKY_RELU, SOFTMAX, ELU, SELU, SOFTPLUS, GELU, GELU_TANH, SILU = \
    range(12)

#: activation name -> integer code understood by every backend. Each derivative is computed
#: from the layer's output a = f(z), so the forward pass saves only activations, except for
#: the activations in :data:`NEEDS_PREACTIVATION`.
ACTIVATIONS = {
    "identity": IDENTITY,
    "sigmoid": SIGMOID,
    "tanh": TANH,
    "relu": RELU,
    "leaky_relu": LEAKY_RELU,
    "softmax": SOFTMAX,
    "elu": ELU,
    "selu": SELU,
    "softplus": SOFTPLUS,
    "gelu": GELU,
    "gelu_tanh": GELU_TANH,
    "silu": SILU,
}

#: activations whose derivative cannot be computed from a = f(z) (f is not invertible):
#: ``dense_forward`` then also writes the pre-activation z into its ``Z`` argument and
#: ``dense_backward`` reads f′(z) from it. Only layers with these activations keep z, so a
#: relu/sigmoid/tanh network needs no more memory than before. (A design change of the
#: kernel interface: ``Z`` is an optional last argument of both dense kernels.)
NEEDS_PREACTIVATION = frozenset({GELU, GELU_TANH, SILU})

#: slope of leaky ReLU for z < 0
LEAKY_SLOPE = 0.01
#: SELU's constants, PyTorch's: a = λz for z > 0, λα(e^z − 1) otherwise (ELU has α = 1)
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
#: softplus is z itself above this (PyTorch's threshold with β = 1): log(1 + e^z) = z there
SOFTPLUS_THRESHOLD = 20.0

#: gelu_tanh: 0.5 z (1 + tanh(√(2/π) (z + 0.044715 z³))), PyTorch's approximate="tanh"
GELU_TANH_C, GELU_TANH_K = 0.7978845608028654, 0.044715

# -- dropout's random numbers: counter-based, so every backend draws the same masks --------
# Element j of row i of a minibatch (n units wide; i its row's number in the minibatch) is
# kept when
#     hash32(((i·n + j)·GOLDEN mod 2³²) XOR key) ≥ dropout_threshold(p),
# with key = dropout_key(seed, step, stream): the model's seed, its training-step count (one
# per minibatch trained, over all fits) and the Dropout layer's stream (its rank among the
# model's Dropout layers). No state, no generator per thread: any thread computes any
# element's draw, a backward pass recomputes its mask instead of storing it, and the masks do
# not depend on the thread count. (Python ints, NumPy uint64 arrays and compiled int64 code
# all compute the same values: every product is reduced mod 2³² before the next step, and
# none overflows int64: HASH_M2 ≥ 2³¹ is applied in 16-bit halves.)
MASK32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B9
HASH_M1, HASH_M2 = 0x7FEB352D, 0x846CA68B
HASH_M2_LO, HASH_M2_HI = HASH_M2 & 0xFFFF, HASH_M2 >> 16


def hash32(x):
    """A 32-bit integer hash (C. Wellons' lowbias32): a bijection of [0, 2³²) whose output
    bits each depend on every input bit."""
    x = x & MASK32
    x = x ^ (x >> 16)
    x = (x * HASH_M1) & MASK32
    x = x ^ (x >> 15)
    x = (x * HASH_M2_LO + (((x * HASH_M2_HI) & 0xFFFF) << 16)) & MASK32   # x·HASH_M2 mod 2³²
    return x ^ (x >> 16)


def _mix(k, v):
    """One round of the key: the hash of (k XOR v) + GOLDEN (the offset keeps 0 from being a
    fixed point, as hash32(0) = 0)."""
    return hash32((k ^ v) + GOLDEN)


def dropout_key(seed, step, stream):
    """The key of one Dropout layer's masks at one training step (see above)."""
    k = _mix(_mix(0, seed & MASK32), (seed >> 32) & MASK32)
    k = _mix(k, step & MASK32)
    return _mix(k, ((step >> 32) & MASK32) ^ ((stream * GOLDEN) & MASK32))


def dropout_threshold(p: float) -> int:
    """Draws below this are dropped: P(drop) = threshold / 2³² = p to within 2⁻³²."""
    return int(p * 4294967296.0)


#: the functions every backend module must define
INTERFACE = (
    "dense_forward",
    "dense_backward",
    "mse",
    "softmax_cross_entropy",
    "sigmoid_binary_cross_entropy",
    "sgd",
    "sgd_momentum",
    "adam",
    "adamw",
    "rmsprop",
    "batchnorm_forward",
    "batchnorm_backward",
    "dropout",
)

# -- the training plan (built by fastnn.plan, executed by each backend's fused trainer) -------
# Kept here, in the package every backend may import, so the plan's numbers have one home.

#: op kinds of the plan's op table
DENSE, BATCHNORM, ADD, DROPOUT, STANDARDIZE = range(5)
#: columns of the op table (``plan.ops``, int64, one row per op); see fastnn.plan
KIND, IN, OUT, NIN, NOUT, ACT, POFF, SOFF, AUX, SKIP, DX, DSKIP = range(12)
#: columns of ``plan.fops`` (float64, one row per op): BatchNorm's momentum and eps; Dropout's
#: p in the first
BN_MOMENTUM, BN_EPS = range(2)
DROPOUT_P = 0
#: values of the DX / DSKIP columns: how an op's input gradient is produced
GRAD_SKIP, GRAD_WRITE, GRAD_ADD = range(3)
#: phases of a step's actions (``plan.actions`` rows are (phase, op))
GATHER, FORWARD, LOSS, BACKWARD = range(4)
#: stage kinds (``plan.stages`` rows are (kind, first action, end action)): row-local actions
#: that a thread can run on its own chunk of rows, or one BatchNorm pass over the whole batch
ROWS, WHOLE_BATCH = range(2)
#: loss codes (``plan.loss``)
MSE, CROSS_ENTROPY, BINARY_CROSS_ENTROPY = range(3)
#: optimizer rule codes (``plan.rule``)
SGD, MOMENTUM, ADAM, ADAMW, RMSPROP = range(5)
#: entries of ``plan.hyper`` (float64): learning rate, momentum or β₁, β₂ (RMSprop: α), ε,
#: weight decay, Nesterov (1.0 or 0.0) from the optimizer; then the fit's gradient-norm clip
#: (0: off): each step's gradient is scaled by min(1, clip/(‖g‖₂ + CLIP_EPS)) before the update
LR, MU_OR_BETA1, BETA2, OPT_EPS, WEIGHT_DECAY, NESTEROV, CLIP_NORM = range(7)
N_OPTIMIZER_HYPER, N_HYPER = 6, 7
#: added to the gradient norm before clipping, as torch.nn.utils.clip_grad_norm_ does
CLIP_EPS = 1e-6


def adam_scalars(lr: float, beta1: float, beta2: float, t: int) -> tuple[float, float]:
    """Adam's bias corrections as two scalars of step ``t`` (1-based), in float64: the step
    size η/(1−β₁ᵗ) and 1/√(1−β₂ᵗ). Every backend updates w ← w − step·m/(√v·inv + ε), which
    is η m̂/(√v̂ + ε) arranged as torch.optim.Adam arranges it, with one division and one
    square root per entry (m/(1−β₁ᵗ) and v/(1−β₂ᵗ) entry by entry took two divisions more:
    an Adam step over 300 000 float32 parameters ran 243 µs in the cython kernel, SGD 59)."""
    return lr / (1 - beta1 ** t), 1 / math.sqrt(1 - beta2 ** t)

# -- the inference plan (fastnn.plan.InferencePlan, executed by a backend's make_predictor) ----
#: a fused forward pass (predict, evaluate) of at least this many multiply-adds runs on every
#: thread: each thread's share of two (≥ 2^22, ≈ 30 µs of one core) then outweighs waking it
#: (20-150 µs measured on 2-vCPU VMs, where an idle vCPU is halted)
PREDICT_TEAM_WORK = 1 << 23
#: rows per chunk at least (fewer leave the matmul kernels' row blocks half empty)
PREDICT_MIN_ROWS = 8


def predict_split(n: int, rows: int, work_per_row: int, threads: int) -> tuple[int, int]:
    """(rows per chunk, threads) for a fused forward pass over n rows in chunks of at most
    ``rows``: one chunk per thread where that fits, every thread only where the work pays."""
    team = threads if n * work_per_row >= PREDICT_TEAM_WORK else 1
    chunk = min(rows, max(PREDICT_MIN_ROWS, -(-n // team)))
    return chunk, max(1, min(team, -(-n // chunk)))


def check_predict_arrays(plan, X, out) -> None:
    """Raise ValueError unless X is (n, plan.in_features) and out (n, plan.out_features): what
    every backend's fused forward pass takes."""
    if X.ndim != 2 or X.shape[1] != plan.in_features:
        raise ValueError(f"run needs X (n, {plan.in_features}), got {X.shape}")
    if out.shape != (len(X), plan.out_features):
        raise ValueError(f"out must have shape {(len(X), plan.out_features)}, got {out.shape}")
