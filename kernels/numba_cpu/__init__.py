"""Numba CPU backend: parallel compiled kernels and a fused whole-epoch trainer.

The kernel functions follow ``fastnn.kernels.reference`` exactly (see :mod:`.interface`);
:func:`make_trainer` compiles a whole training epoch into one call for ``Sequential.fit``, and
:func:`make_predictor` a whole forward pass for ``predict`` and ``evaluate``.
Compiled code is cached on disk (``cache=True``), so only the first process pays the JIT.
Importing changes no process setting: the threading layer is chosen and the BLAS limited
only while a kernel runs (``fastnn.kernels._threads``).
"""
try:
    import numba  # noqa: F401
except ImportError as exc:
    raise ImportError(f"numba is not installed ({exc}); pip install numba") from exc
try:
    import scipy.linalg.cython_blas  # noqa: F401
except ImportError as exc:
    raise ImportError(f"scipy is not installed ({exc}): np.dot inside Numba reaches BLAS "
                      f"through it; pip install scipy") from exc

from .interface import (adam, adamw, batchnorm_backward, batchnorm_forward,  # noqa: E402
                        dense_backward, dense_forward, dropout, mse, rmsprop, sgd,
                        sgd_momentum, sigmoid_binary_cross_entropy, softmax_cross_entropy)
from .cache import cache_status, drop_stale_cache  # noqa: E402
from .predict import make_predictor  # noqa: E402
from .trainer import make_trainer  # noqa: E402

drop_stale_cache()

__all__ = ["adam", "adamw", "batchnorm_backward", "batchnorm_forward", "cache_status",
           "dense_backward", "dense_forward", "dropout", "make_predictor", "make_trainer", "mse",
           "rmsprop", "sgd", "sgd_momentum", "sigmoid_binary_cross_entropy",
           "softmax_cross_entropy"]
