"""Shared fixtures: the backends under test, the size of generated cases, and the tolerances
of DESIGN.md."""
import os

import numpy as np
import pytest

from fastnn.backends import available_backends, resolve

#: every usable compiled backend; each is checked against the NumPy reference
COMPILED_BACKENDS = [name for name, info in available_backends().items()
                     if info.usable and name != "reference"]


#: bounds of the generated kernel cases; tests/test_numba_cuda.py lowers them to run the same
#: suite under the CUDA simulator, which executes every GPU thread in Python
MAX_BATCH = int(os.environ.get("FASTNN_TEST_MAX_BATCH", 257))
MAX_WIDTH = int(os.environ.get("FASTNN_TEST_MAX_WIDTH", 300))
EXAMPLES = int(os.environ.get("FASTNN_TEST_EXAMPLES", 20))


@pytest.fixture(scope="session")
def reference():
    return resolve("reference")[1]


def tolerance(dtype, reduction: int = 1) -> dict:
    """assert_allclose tolerances for a compiled result vs the reference (DESIGN.md):
    float32 rtol 1e-4 / atol 1e-5, float64 1e-10, atol scaled by √(reduction length)."""
    scale = max(1.0, float(np.sqrt(reduction)))
    if np.dtype(dtype) == np.float32:
        return {"rtol": 1e-4, "atol": 1e-5 * scale}
    return {"rtol": 1e-10, "atol": 1e-10 * scale}


def layout(a: np.ndarray, kind: str) -> np.ndarray:
    """The same values in another memory layout: "C", "F" (Fortran) or "strided" (a view
    with a column step of 2 into a larger array)."""
    if kind == "C":
        return np.ascontiguousarray(a)
    if kind == "F":
        return np.asfortranarray(a)
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    wide[..., ::2] = a
    return wide[..., ::2]
