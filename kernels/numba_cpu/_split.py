"""How a batch is split into per-thread row chunks, and the flat-buffer block size.

Rows of a batch are independent through a dense layer (forward, dZ, dX), so each thread takes
a contiguous chunk of rows and calls single-threaded BLAS on it. A chunk must carry enough
work to pay for waking a thread and the barrier after it (a few µs on an idle machine, and
much more when other processes hold the cores), so small problems stay in one chunk.
"""
from numba.extending import register_jitable

from .._teams import MIN_BAND_ROWS as MIN_ROWS   # fewest rows worth a chunk
#: fewest multiply-adds (forward pass) worth a chunk of their own in a kernel that starts a
#: parallel region per call (the layer path's kernels; the fused trainer runs a whole epoch
#: in one region and splits from ``_teams.MIN_BAND_WORK``): ≈ 35 µs of one core forward.
#: Handing a chunk to the second thread costs 25-120 µs per parallel region on the 2-core VM
#: this was tuned on (workqueue wake-up, context switches), and far more when other processes
#: hold the cores. Measured there with a region per step, µs per step, serial vs split in
#: two: deep (21 × 64², batch 64: 5.5 M) 320 vs 375, small (1.7 M) 89 vs 108, mnist (34 M)
#: 1750 vs 1100; wide (4 G) splits.
MIN_CHUNK_WORK = 1 << 22
#: multiply-adds of one layer's forward matmul from which the layer path's dense kernel runs
#: serially with BLAS on all threads instead of in row chunks: OpenBLAS's own threads hand
#: work over faster than a Numba region on this VM. Measured (the trainer, when it started a
#: region per step), µs per step, row chunks vs threaded BLAS: mnist (largest layer
#: 128·784·256 = 26 M) 1130 vs 980, wide (1 G) 85 000 vs 82 500; below ~16 M OpenBLAS
#: threads poorly (small, 64·128·128: 88 µs on 1 thread, 113 on 2).
BLAS_THREADS_WORK = 1 << 24
#: entries per block of the flat parameter buffer (fits L1 with its optimizer state)
BLOCK = 2048
#: blocks from which the optimizer pass runs in parallel (2 Mi parameters: in the fused
#: trainer's threaded-BLAS mode, where the minibatch itself is one chunk). Measured, SGD:
#: 268 K parameters 38 µs serial vs 150 µs as a 2-thread region (the region's fixed cost);
#: 8.4 M parameters 2300 µs serial vs 1270 µs on 2 threads.
PARALLEL_UPDATE_BLOCKS = 1024


@register_jitable
def row_split(n, threads, work_per_row, min_chunk_work=MIN_CHUNK_WORK):
    """(rows per chunk q, number of chunks ≤ threads) for n rows, each row costing
    work_per_row multiply-adds; chunk c is rows [c·q, min(n, c·q + q))."""
    chunks = max(1, min(threads, n * work_per_row // min_chunk_work))
    q = max(MIN_ROWS, (n + chunks - 1) // chunks)
    return q, (n + q - 1) // q
