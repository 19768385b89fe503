"""GPU backend: CUDA kernels written with Numba's CUDA target (the ``numba-cuda`` package).

* :mod:`.cuda_kernels` — the kernels: a tiled shared-memory matmul with bias and activation in
  its epilogue (also the backward's dW = Xᵀ dZ and dX = dZ Wᵀ, through transpose flags), fused
  dZ/db, softmax/BCE/MSE losses reduced on the device, one optimizer kernel over the flat
  parameter buffer, BatchNorm.
* :mod:`.ops` — the kernel interface on device arrays (grid sizing and launches).
* :mod:`.host` — the same interface on host NumPy arrays (copy in, launch, copy out), which is
  what ``fastnn.kernels.INTERFACE`` requires.
* :mod:`.trainer` — :func:`make_trainer`: ``fit`` with parameters, optimizer state and
  (when it fits) the training set resident on the GPU.
* :mod:`.predict` — :func:`make_predictor`: ``predict`` and ``evaluate``, the weights copied
  to the device once per call and the rows sent through in chunks.
* :mod:`.bench` — :func:`matmul_tflops`, the matmul kernel's throughput at n × n.

Importing raises ImportError saying why when the backend cannot run here: numba-cuda is not
installed, or no CUDA GPU is usable. Under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``
set before numba is imported) the kernels run on the CPU, slowly: that is how the tests check
them on machines without a GPU.
"""
import importlib.util

if importlib.util.find_spec("numba_cuda") is None:
    raise ImportError("numba-cuda is not installed (pip install 'fastnn[cuda]')")

from .._cuda_driver import driver_missing  # noqa: E402

if driver_missing():                         # ~1.7 s sooner than numba.cuda would say it
    raise ImportError("no CUDA GPU found (CUDA driver library cannot be found.)")

from numba import cuda  # noqa: E402

if not cuda.is_available():
    _why = str(cuda.cuda_error() or "").strip().splitlines()
    raise ImportError("no CUDA GPU found" + (f" ({_why[0]})" if _why else ""))

from numba.cuda import config as _config  # noqa: E402

if not _config.ENABLE_CUDASIM:
    from numba.cuda.cudadrv import nvvm as _nvvm

    if not _nvvm.is_available():
        raise ImportError("a CUDA GPU is present but the CUDA toolkit's NVVM compiler is "
                          "not found (pip install 'numba-cuda[cu12]', or [cu13] for a "
                          "CUDA 13 driver)")

from .bench import matmul_tflops  # noqa: E402
from .host import (adam, adamw, batchnorm_backward, batchnorm_forward,  # noqa: E402
                   dense_backward, dense_forward, dropout, mse, rmsprop, sgd, sgd_momentum,
                   sigmoid_binary_cross_entropy, softmax_cross_entropy)
from .predict import make_predictor  # noqa: E402
from .trainer import make_trainer  # noqa: E402

__all__ = ["dense_forward", "dense_backward", "dropout", "mse", "softmax_cross_entropy",
           "sigmoid_binary_cross_entropy", "sgd", "sgd_momentum", "adam", "adamw", "rmsprop",
           "batchnorm_forward", "batchnorm_backward", "make_predictor", "make_trainer",
           "matmul_tflops"]
