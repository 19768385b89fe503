"""Throughput of the matmul kernel, for comparing it with cuBLAS in the benchmark suite."""
from __future__ import annotations

import time

import numpy as np
from numba import cuda

from . import ops


def matmul_tflops(n: int = 2048, dtype="float32", repeats: int = 10,
                  thread_tile: int = ops.THREAD_TILE) -> float:
    """TFLOP/s of the matmul kernel computing C = A @ B for n × n matrices (2n³ flops each).

    Compiles and warms up first, then times ``repeats`` launches between device
    synchronisations. Meaningless under the CUDA simulator (it runs on the CPU).
    """
    rng = np.random.default_rng(0)
    A = cuda.to_device(rng.standard_normal((n, n)).astype(dtype))
    B = cuda.to_device(rng.standard_normal((n, n)).astype(dtype))
    C = cuda.device_array((n, n), dtype)
    ops.matmul(A, B, False, False, C, thread_tile=thread_tile)
    cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        ops.matmul(A, B, False, False, C, thread_tile=thread_tile)
    cuda.synchronize()
    seconds = time.perf_counter() - start
    return 2 * n ** 3 * repeats / seconds / 1e12
