"""How many threads fastnn's compute uses: Numba's pool and BLAS's, sized together.

The numba_cpu kernels call BLAS (through SciPy, which is how ``np.dot`` inside Numba reaches
it) from inside their parallel regions, one row chunk per thread. That BLAS therefore runs
single-threaded, and Numba's pool alone sets the parallelism: n Numba threads × 1 BLAS thread
never exceed n. Only compiled code that runs no parallel region (the fused trainer for
networks with big layers) lets that BLAS use the n threads, for its duration
(:class:`kernel_blas_threads`). The BLAS that NumPy itself uses (reference backend, code outside the kernels)
gets the n threads. Where SciPy and NumPy share one BLAS library (some conda installs), that
library is pinned to 1 thread, since oversubscribing would cost more.
"""
from __future__ import annotations

import os

_requested: int | None = None


def _blas_controllers():
    """(BLAS libraries the Numba kernels call, the others) as threadpoolctl controllers."""
    from threadpoolctl import ThreadpoolController

    try:
        import scipy
        import scipy.linalg.cython_blas  # noqa: F401  (loads the library Numba calls)
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


def choose_numba_layer() -> None:
    """Use Numba's own workqueue threading layer unless NUMBA_THREADING_LAYER says otherwise.

    On a 2-core machine shared with other processes, OpenMP's spinning barrier made 2-thread
    steps 5-50x slower than 1 thread (a descheduled worker stalls every parallel region), while
    the workqueue degrades gracefully. It must be chosen before Numba first starts its threads
    (``numba.set_num_threads`` or a parallel kernel), so every entry point calls this first;
    it has no effect once Numba's threads run.
    """
    import numba

    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "workqueue"


_kernel_blas: list | None = None


def pin_kernel_blas() -> None:
    """Make the BLAS called inside Numba's parallel regions single-threaded."""
    global _kernel_blas
    _kernel_blas = _blas_controllers()[0]
    for c in _kernel_blas:
        c.set_num_threads(1)


class kernel_blas_threads:
    """``with kernel_blas_threads(n):`` lets the kernels' BLAS use n threads, for compiled
    code that calls BLAS only outside Numba's parallel regions (so the pools never stack);
    back to 1 on exit. Cheap: one C call per library each way."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        for c in _kernel_blas or ():
            c.set_num_threads(self.n)

    def __exit__(self, *exc):
        for c in _kernel_blas or ():
            c.set_num_threads(1)


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for compute: Numba's pool gets n, OpenMP's (the cython kernels) gets n,
    NumPy's BLAS gets n, and the BLAS called inside the kernels' parallel regions stays at 1, so
    the two never stack.

    ``n`` must be between 1 and the number of threads Numba was started with
    (``NUMBA_NUM_THREADS``, by default the number of CPUs).
    """
    global _requested
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    try:
        import numba
    except ImportError:
        numba = None
    if numba is not None:
        choose_numba_layer()
        limit = numba.config.NUMBA_NUM_THREADS
        if n > limit:
            raise ValueError(f"n={n} exceeds the {limit} threads Numba was started with "
                             f"(set NUMBA_NUM_THREADS before importing fastnn to raise it)")
        numba.set_num_threads(n)
    from threadpoolctl import threadpool_limits
    threadpool_limits(n, user_api="openmp")
    kernel, others = _blas_controllers()
    for c in kernel:
        c.set_num_threads(1)
    for c in others:
        c.set_num_threads(n)
    _requested = n


def get_num_threads() -> int:
    """The thread count set by :func:`set_num_threads`, else Numba's (or the CPU count)."""
    if _requested is not None:
        return _requested
    try:
        import numba
        return numba.get_num_threads()
    except ImportError:
        return os.cpu_count() or 1
