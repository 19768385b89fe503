"""The cython extension's own float32 matmul, called from the Numba kernels.

``fastnn_sgemm_small`` (kernels/cython/_kernels.pyx) computes row-major C = op(A)·op(B) in
float32 with fastnn's own register-blocked AVX-512 or AVX2 kernel where that beats BLAS (an
AVX-512 CPU and at least 16 columns, or AVX2 with FMA, at least 8 columns and under 2^25
multiply-adds; FASTNN_OWN_GEMM=0 turns it off) and returns 0
elsewhere, and :func:`matmul` then calls ``np.dot`` (BLAS) as before. The fused trainer uses it
in every row chunk (tiny, small, deep networks: 1.3-2.2× faster steps measured on one
thread); with threaded BLAS (big layers) and in the interface kernels it stays with BLAS.
(It once measured slower than BLAS in 2-thread row chunks, mnist 1170 vs 953 µs: those paid a
~120 µs Numba region per step; in the trainer's team of threads, 642 µs.) The function is
reached by name (a symbol registered with LLVM at import), so kernels that call it still
cache on disk. Without the cython extension the symbol is a stub that always returns 0: BLAS
everywhere.
"""
import ctypes

import llvmlite.binding as llvm
import numpy as np
from numba import njit, types
from numba.extending import overload

SYMBOL = "fastnn_sgemm_small"
#: (trans_a, trans_b, m, n, k, A, lda, B, ldb, C, ldc) -> handled; pointers passed as intp
_sgemm = types.ExternalFunction(SYMBOL, types.intc(types.intc, types.intc,
                                                   *([types.intp] * 9)))
_STUB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_int,
                         *([ctypes.c_ssize_t] * 9))(lambda *args: 0)


def _extension():
    """The cython extension module, or None where it is not built."""
    try:
        from ..cython import _kernels
    except ImportError:
        return None
    return _kernels


_ext = _extension()


def own_gemm() -> bool:
    """Whether float32 matmuls that suit it may run on fastnn's kernel (not BLAS) here."""
    return _ext is not None and _ext.own_gemm()

llvm.add_symbol(SYMBOL, ctypes.cast(_STUB, ctypes.c_void_p).value if _ext is None
                else _ext.own_gemm_address())


def _own_matmul(A, B, C, trans_a, trans_b):
    """C = op(A)·op(B) by the extension's kernel; whether it did it (compiled, see below)."""


@overload(_own_matmul)
def _own_matmul_impl(A, B, C, trans_a, trans_b):
    if not (A.dtype == B.dtype == C.dtype == types.float32):
        return lambda A, B, C, trans_a, trans_b: False

    def impl(A, B, C, trans_a, trans_b):
        item = 4
        if A.strides[1] != item or B.strides[1] != item or C.strides[1] != item:
            return False                                  # rows must be contiguous
        m, n = C.shape
        k = A.shape[0] if trans_a else A.shape[1]
        return _sgemm(np.int32(1 if trans_a else 0), np.int32(1 if trans_b else 0), m, n, k,
                      A.ctypes.data, A.strides[0] // item, B.ctypes.data,
                      B.strides[0] // item, C.ctypes.data, C.strides[0] // item) != 0
    return impl


@njit(inline="always", error_model="numpy")
def matmul(A, B, C, trans_a, trans_b, own):
    """C = op(A)·op(B) with op(M) = Mᵀ when its flag is set: with ``own``, fastnn's kernel
    where it takes the matmul, else BLAS through ``np.dot``."""
    if own and _own_matmul(A, B, C, trans_a, trans_b):
        return
    if trans_a:
        np.dot(A.T, B, C)
    elif trans_b:
        np.dot(A, B.T, C)
    else:
        np.dot(A, B, C)
