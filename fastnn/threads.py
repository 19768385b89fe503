"""How many threads fastnn's compute uses: Numba's pool, OpenMP's and BLAS's, set together.

:func:`set_num_threads` is the one place where fastnn changes thread settings for the rest of
the process, because the user asked it to. Everything else leaves them as it found them: the
kernels limit the BLAS they call inside their parallel regions to one thread only for the
duration of the call (``fastnn.kernels._threads.kernel_blas_threads``), so n Numba threads ×
1 BLAS thread never exceed n, and restore the limit on return.
"""
from __future__ import annotations

import os

from .kernels._threads import blas_controllers, choose_numba_layer

_requested: int | None = None


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for compute: Numba's pool, OpenMP's (the cython kernels) and every
    BLAS library get n. (Inside the kernels' parallel regions their BLAS still runs one
    thread per call, for the duration of the call.)

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
        limit = numba.config.NUMBA_NUM_THREADS
        if n > limit:
            raise ValueError(f"n={n} exceeds the {limit} threads Numba was started with "
                             f"(set NUMBA_NUM_THREADS before importing fastnn to raise it)")
        choose_numba_layer()                  # before set_num_threads starts Numba's pool
        numba.set_num_threads(n)
    try:                    # threadpoolctl limits only the OpenMP runtimes already loaded:
        from .kernels import cython  # noqa: F401  load the cython kernels' first, so a later
    except ImportError:     # import does not bring a runtime at the default (all cores)
        pass
    from threadpoolctl import threadpool_limits
    threadpool_limits(n, user_api="openmp")
    for controllers in blas_controllers():
        for c in controllers:
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
