"""A thread-safe ``cuda.shared.array`` for Numba's CUDA simulator (numba-cuda 0.30).

The simulator runs each GPU thread of a block as a Python thread and gives the threads of a
block the same shared array by looking up the calling source line in a dict:
``get`` → ``None`` → ``np.empty`` → store, without a lock. Two threads that interleave there
each get their own array; the one whose array is not stored loads its part of a tile into an
array no other thread reads, and reads uninitialised memory where the others' parts should be.
A 4 × 6 matmul of tests/numba_cuda_checks.py turned NaN this way in one column when
``np.empty`` was made to return NaN, and CI saw trained parameters 10 % off the reference
(2026-12-02, after conftest.py began handing the GIL on every millisecond).

:func:`install` replaces the method with the same lookup under a lock, keyed as the
simulator keys it (the caller's file and line), and with a frame lookup instead of
``traceback.extract_stack``, which also makes the call cheaper.
"""
import sys
import threading

import numpy as np


def install() -> None:
    """Make the simulator's static shared arrays safe to request from concurrent threads."""
    from numba.core import types
    from numba.cuda.simulator.kernelapi import FakeCUDAShared
    from numba.np import numpy_support

    if getattr(FakeCUDAShared.array, "thread_safe", False):
        return
    original = FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:      # dynamic shared memory; or the error
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            res = self._allocations.get(key)
            if res is None:
                res = self._allocations[key] = np.empty(shape, dtype)
        return res

    array.thread_safe = True
    FakeCUDAShared.array = array
