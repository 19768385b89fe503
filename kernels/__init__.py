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
"""

IDENTITY, SIGMOID, TANH, RELU, LEAKY_RELU, SOFTMAX = range(6)

#: activation name -> integer code understood by every backend
ACTIVATIONS = {
    "identity": IDENTITY,
    "sigmoid": SIGMOID,
    "tanh": TANH,
    "relu": RELU,
    "leaky_relu": LEAKY_RELU,
    "softmax": SOFTMAX,
}

#: slope of leaky ReLU for z < 0
LEAKY_SLOPE = 0.01

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
    "batchnorm_forward",
    "batchnorm_backward",
)
