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
* Kernels are leaves: nothing here imports fastnn's model-level modules. A compiled backend's
  ``make_trainer(plan)`` takes a training plan (built by ``fastnn.plan``: plain arrays and the
  codes defined below) and returns a fused trainer for it.
* Importing a backend changes no process setting; thread limits a kernel needs hold only for
  the duration of its call (``._threads``).
"""

IDENTITY, SIGMOID, TANH, RELU, LEAKY_RELU, SOFTMAX, ELU, SELU, SOFTPLUS = range(9)

#: activation name -> integer code understood by every backend. Each derivative is computed
#: from the layer's output a = f(z), so the forward pass saves only activations.
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
}

#: slope of leaky ReLU for z < 0
LEAKY_SLOPE = 0.01
#: SELU's constants, PyTorch's: a = λz for z > 0, λα(e^z − 1) otherwise (ELU has α = 1)
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
#: softplus is z itself above this (PyTorch's threshold with β = 1): log(1 + e^z) = z there
SOFTPLUS_THRESHOLD = 20.0

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
)

# -- the training plan (built by fastnn.plan, executed by each backend's fused trainer) -------
# Kept here, in the package every backend may import, so the plan's numbers have one home.

#: op kinds of the plan's op table
DENSE, BATCHNORM, ADD = range(3)
#: columns of the op table (``plan.ops``, int64, one row per op); see fastnn.plan
KIND, IN, OUT, NIN, NOUT, ACT, POFF, SOFF, AUX, SKIP, DX, DSKIP = range(12)
#: columns of ``plan.fops`` (float64, one row per op): BatchNorm's momentum and eps
BN_MOMENTUM, BN_EPS = range(2)
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
