"""Thread settings the compiled kernels need, applied for the duration of a kernel call only.

numba_cpu (``np.dot`` inside Numba) and cython (``scipy.linalg.cython_blas``) call SciPy's
BLAS. Inside their parallel regions each thread calls it on its own chunk of rows, so there it
must run one thread per call, or Numba's (OpenMP's) threads and BLAS's would stack; a serial
kernel with big matmuls may instead let it use n threads. :class:`kernel_blas_threads` sets
that limit on entry and restores the one it found on exit, exceptions included, so importing
or using fastnn never changes the thread settings of the rest of the process.
"""
from __future__ import annotations

import os
import threading

_controllers: list | None = None
_lock = threading.Lock()


def blas_controllers() -> tuple[list, list]:
    """(threadpoolctl controllers of the BLAS the kernels call, of the other BLAS libraries).

    The kernels' BLAS is the one SciPy loaded (scipy/ or scipy.libs/); where NumPy and SciPy
    share one library (some conda installs), that one.
    """
    from threadpoolctl import ThreadpoolController

    try:
        import scipy
        import scipy.linalg.cython_blas
    except ImportError:
        scipy = None
    blas = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
    if scipy is None:
        return [], blas
    site = os.path.dirname(os.path.dirname(os.path.abspath(scipy.__file__)))
    scipy_dirs = tuple(os.path.join(site, d) + os.sep for d in ("scipy", "scipy.libs"))
    kernel = [c for c in blas if os.path.abspath(c.filepath).startswith(scipy_dirs)]
    if not kernel:                        # one BLAS shared by NumPy and SciPy
        return blas, []
    return kernel, [c for c in blas if c not in kernel]


def kernel_blas() -> list:
    """The kernels' BLAS controllers, found once (enumerating libraries costs milliseconds)."""
    global _controllers
    with _lock:
        if _controllers is None:
            _controllers = blas_controllers()[0]
    return _controllers


class kernel_blas_threads:
    """``with kernel_blas_threads(n):`` runs the block with the kernels' BLAS limited to n
    threads, then restores the limit each library had (one C call per library each way)."""

    def __init__(self, n: int):
        self.n = n
        self._saved: list = []

    def __enter__(self):
        self._saved = []
        for c in kernel_blas():
            before = c.num_threads
            if before != self.n:
                c.set_num_threads(self.n)
                self._saved.append((c, before))
        return self

    def __exit__(self, *exc):
        for c, before in self._saved:
            c.set_num_threads(before)
        self._saved = []


def choose_numba_layer() -> None:
    """Use Numba's workqueue threading layer unless the user chose one (NUMBA_THREADING_LAYER,
    or ``numba.config.THREADING_LAYER`` set in code) or Numba's threads already run.

    Called right before fastnn first starts Numba's threads (a parallel kernel, or
    ``numba.get_num_threads``), never at import. Why workqueue: on a 2-core machine shared with
    other processes, OpenMP's spinning barrier made 2-thread steps 5-50x slower than 1 thread
    (a descheduled worker stalls every parallel region); the workqueue degrades gracefully.
    """
    import numba
    from numba.np.ufunc import parallel

    if ("NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default"
            and not parallel._is_initialized):
        numba.config.THREADING_LAYER = "workqueue"
