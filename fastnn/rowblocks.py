"""Passes over a big array in blocks of rows, so that a check or a statistic over X needs a
fixed, small scratch (a block's mask or float64 image), not one the size of X."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

#: elements per block: 256 KiB as float64, 32 KiB as a mask; small next to any X worth
#: blocking, large enough that the per-block Python cost stays negligible
BLOCK_ITEMS = 1 << 15


def row_blocks(a: np.ndarray, rows: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (start, block): a's rows start:start + len(block) in order, as views, or with
    ``rows`` (indices) those rows of a, gathered block by block. A block holds at most
    :data:`BLOCK_ITEMS` elements (at least one row)."""
    n = len(a) if rows is None else len(rows)
    step = max(1, BLOCK_ITEMS // max(1, int(np.prod(a.shape[1:]))))
    for start in range(0, n, step):
        yield start, a[start:start + step] if rows is None else a[rows[start:start + step]]
