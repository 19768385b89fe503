"""Numba CPU backend: parallel compiled kernels and a fused whole-epoch trainer.

The kernel functions follow ``fastnn.kernels.reference`` exactly (see :mod:`.interface`);
:func:`make_trainer` compiles a whole training epoch into one call for ``Sequential.fit``.
Compiled code is cached on disk (``cache=True``), so only the first process pays the JIT.
"""
try:
    import numba  # noqa: F401
    import scipy.linalg.cython_blas  # noqa: F401  (np.dot inside Numba calls BLAS through it)
except ImportError as exc:
    raise ImportError(f"numba is not installed or incomplete ({exc}); "
                      f"pip install numba scipy") from exc

import os  # noqa: E402

from ...threads import pin_kernel_blas  # noqa: E402

pin_kernel_blas()
if "NUMBA_THREADING_LAYER" not in os.environ:
    # Numba's own thread pool rather than OpenMP: on a 2-core machine shared with other
    # processes, OpenMP's spinning barrier made 2-thread steps 5-50x slower than 1 thread
    # (a descheduled worker stalls every region), while the workqueue degrades gracefully.
    # It takes effect unless Numba already ran parallel code in this process.
    numba.config.THREADING_LAYER = "workqueue"

from .interface import (adam, batchnorm_backward, batchnorm_forward, dense_backward,  # noqa
                        dense_forward, mse, sgd, sgd_momentum, sigmoid_binary_cross_entropy,
                        softmax_cross_entropy)
from .cache import cache_status  # noqa: E402
from .trainer import make_trainer  # noqa: E402
