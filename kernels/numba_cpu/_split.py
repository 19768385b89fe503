"""How a batch is split into per-thread row chunks, and the flat-buffer block size.

Rows of a batch are independent through a dense layer (forward, dZ, dX), so each thread takes
a contiguous chunk of rows and calls single-threaded BLAS on it. Below ``MIN_ROWS`` rows per
chunk the per-call overhead outweighs the second thread (measured on 2 cores).
"""
from numba.extending import register_jitable

#: fewest rows worth a chunk of their own
MIN_ROWS = 8
#: entries per parallel block of the flat parameter buffer (fits L1 with its optimizer state)
BLOCK = 2048


@register_jitable
def row_split(n, threads):
    """(rows per chunk q, number of chunks) for n rows; chunk c is rows [c·q, min(n, c·q + q))."""
    q = max(MIN_ROWS, (n + threads - 1) // threads)
    return q, (n + q - 1) // q
