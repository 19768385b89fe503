"""Compile every numba_cuda kernel to PTX for a real GPU (sm_90, H100), without one.

The CUDA simulator runs kernels as Python, so it cannot catch code that Numba's CUDA compiler
rejects (typing, unsupported constructs). This script compiles each kernel, float32 and
float64, with the argument types the backend launches it with. It needs the CUDA toolkit's
NVVM and NVRTC (``pip install 'numba-cuda[cu12]'``) but no GPU; tests/test_numba_cuda.py runs
it. Exit status 0 when everything compiled (one line per kernel is printed), 3 when the
toolkit is missing here.
"""
import importlib
import sys
import types
from pathlib import Path

import numba
import numpy as np
from numba import cuda

import fastnn.kernels

# Import the kernel module without running the package's __init__, which refuses to load
# when no GPU is present: a stand-in package object with the real package's path.
package = types.ModuleType("fastnn.kernels.numba_cuda")
package.__path__ = [str(Path(fastnn.kernels.__path__[0]) / "numba_cuda")]
sys.modules[package.__name__] = package
K = importlib.import_module("fastnn.kernels.numba_cuda.cuda_kernels")
ops = importlib.import_module("fastnn.kernels.numba_cuda.ops")

CC = (9, 0)


def examples(dtype):
    """(kernel, example arguments) for every kernel, typed as ops launches them."""
    m, v, s = np.zeros((2, 2), dtype), np.zeros(2, dtype), dtype(0)
    labels, order, totals = np.zeros((2, 1), np.int64), np.zeros(2, np.int64), np.zeros(2)
    matmul = (m, m, True, False, v, True, 3, m, m)
    weights = np.zeros(2)
    return [
        (K.matmul_kernel(ops.THREAD_TILE), matmul),
        (K.matmul_kernel(8), matmul),
        (K.softmax_rows, (m,)),
        (K.row_dots, (m, m, v)),
        (K.activation_backward, (m, m, 9, v, v, m)),
        (K.softmax_cross_entropy, (m, labels, m, totals, weights, True, 0.5)),
        (K.sigmoid_binary_cross_entropy, (m, m, m, totals, weights, True, 0.5)),
        (K.mse, (m, m, m, totals, weights, False, 0.5)),
        (K.optimizer_step, (K.ADAM, v, v, v, v, s, s, s, s, s, False, s, s)),
        (K.sum_squares, (v, totals)),
        (K.scale_to_norm, (v, totals, 1.0, 1e-6)),
        (K.dropout, (m, 1 << 31, s, 12345, 1, m, order, True)),
        (K.standardize, (m, v, v, False, 1, m)),
        (K.batchnorm_forward, (m, v, v, v, v, 0.1, 1e-5, True, m, m, v)),
        (K.batchnorm_backward, (m, m, v, v, m, v, v)),
        (K.add, (m, m, m)),
        (K.gather_rows, (m, m, order, 0, m, m)),
        (K.gather_rows, (m, labels, order, 0, m, labels)),
    ]


def toolkit_missing() -> str:
    """Why kernels cannot be compiled here (CUDA toolkit libraries missing), or ""."""
    try:
        cuda.compile_ptx(lambda a: None, (numba.float32[::1],), cc=CC)
    except Exception as exc:  # the toolkit's loaders raise various errors
        return f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return ""


#: exit status meaning "cannot compile here" (the test skips)
NO_TOOLKIT = 3


def main() -> int:
    missing_toolkit = toolkit_missing()
    if missing_toolkit:
        print(f"the CUDA toolkit is incomplete here ({missing_toolkit})")
        return NO_TOOLKIT
    kernels = {name for name, obj in vars(K).items()
               if hasattr(obj, "py_func") and obj.py_func.__module__ == K.__name__}
    covered = set()
    for dtype in (np.float32, np.float64):
        for kernel, args in examples(dtype):
            signature = tuple(numba.typeof(a) for a in args)
            cuda.compile_ptx(kernel.py_func, signature, cc=CC)
            covered.add(kernel.py_func.__name__)
            print(f"compiled {kernel.py_func.__name__} {np.dtype(dtype).name} for sm_{CC[0]}{CC[1]}")
    missing = kernels - covered
    if missing:
        print(f"no example arguments for {sorted(missing)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
