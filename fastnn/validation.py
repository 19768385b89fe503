"""Input checks for the model API: every message names the argument and what is wrong with it.

All checks run before a model is touched, so a rejected call leaves its weights unchanged.
Integer, boolean and float64 inputs are converted to the model's dtype, never rejected.
"""
from __future__ import annotations

import numbers

import numpy as np

from .rowblocks import row_blocks


def as_numeric_array(a, name: str) -> np.ndarray:
    """Convert array-likes to an ndarray of a real numeric dtype, or raise TypeError."""
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{name} could not be converted to a numeric array: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    return arr


def _non_finite(arr: np.ndarray) -> tuple[int, tuple] | None:
    """(how many NaN/Inf, index of the first) in a float array, or None. Checked block by
    block of rows, so no boolean array the size of arr is made (issue 14)."""
    if arr.dtype.kind != "f":
        return None
    blocks = row_blocks(np.atleast_1d(arr))
    start, block = next(((s, b) for s, b in blocks if not np.isfinite(b).all()), (0, None))
    if block is None:
        return None
    bad = np.argwhere(~np.isfinite(block))
    count = len(bad) + sum(np.count_nonzero(~np.isfinite(b)) for _, b in blocks)
    return count, (start + int(bad[0][0]),) + tuple(int(i) for i in bad[0][1:])


def check_finite(arr: np.ndarray, name: str) -> None:
    """Reject NaN and Inf, saying how many and where the first one is."""
    found = _non_finite(arr)
    if found is not None:
        raise ValueError(f"{name} contains {found[0]} NaN or Inf value(s), the first at "
                         f"index {found[1]}")


def features(X, n_features: int, dtype: np.dtype | None, name: str = "X",
             finite: bool = True) -> np.ndarray:
    """Validate a feature matrix (samples, n_features) and return it C-contiguous in dtype
    (X itself when it already is), or as it is for dtype None. ``finite=False`` leaves out
    the NaN/Inf check, for a caller whose compiled pass checks the rows as it reads them
    (and calls this again to report what it found)."""
    arr = as_numeric_array(X, name)
    if arr.ndim != 2:
        hint = "; use X.reshape(-1, 1) for a single feature" if arr.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D (samples, features), got shape {arr.shape}{hint}")
    if arr.shape[1] != n_features:
        raise ValueError(f"{name} has {arr.shape[1]} columns but the model takes "
                         f"{n_features} inputs")
    if finite and (dtype is None or not _narrows(arr.dtype, dtype)):
        check_finite(arr, name)        # (a narrowing as_float checks its converted copy)
    return arr if dtype is None else as_float(arr, dtype, name, finite)


def _narrows(src: np.dtype, dtype) -> bool:
    """Whether converting floats of ``src`` to ``dtype`` can overflow (float64 to float32)."""
    return src.kind == "f" and np.dtype(dtype).itemsize < src.itemsize


def as_float(arr: np.ndarray, dtype, name: str, finite: bool = True) -> np.ndarray:
    """``arr`` C-contiguous in ``dtype`` (itself when it already is). Where that narrows floats
    (float64 to float32) the converted copy is checked (unless ``finite`` is False): a NaN or
    Inf of ``arr`` is reported as :func:`check_finite` does, and values beyond the narrower
    range, which became Inf, are an error too, not a silent Inf in training. Elsewhere
    ``arr`` must have been checked."""
    with np.errstate(over="ignore"):              # reported below, with where
        out = np.ascontiguousarray(arr, dtype=dtype)
    found = _non_finite(out) if finite and _narrows(arr.dtype, dtype) else None
    if found is not None:
        check_finite(arr, name)                   # NaN or Inf given: say that (on error only)
        raise ValueError(f"{name} holds {found[0]} value(s) beyond {out.dtype}'s range "
                         f"(±{np.finfo(out.dtype).max:.3g}), the first at index {found[1]}: "
                         f"in {out.dtype} they would be Inf; scale {name}, or use a float64 "
                         f"model (dtype='float64')")
    return out


def same_rows(X: np.ndarray, y: np.ndarray, x_name: str = "X", y_name: str = "y") -> None:
    if len(X) != len(y):
        raise ValueError(f"{x_name} has {len(X)} rows but {y_name} has {len(y)}")


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return int(value)


def positive_float(value, name: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a finite {bound} number, got {value}")
    return value


def choice(value, name: str, options) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"unknown {name} {value!r}; choose one of "
                         f"{', '.join(map(repr, options))}")
    return value


def sample_weights(w, n_rows: int, name: str = "sample_weight",
                   allow_all_zero: bool = False) -> np.ndarray:
    """Validate per-row weights: (n_rows,), finite, non-negative, not all zero (unless
    ``allow_all_zero``: one rank's shard, when another's count); float64."""
    arr = as_numeric_array(w, name)
    if arr.shape != (n_rows,):
        raise ValueError(f"{name} must have shape ({n_rows},), one weight per row, got "
                         f"{arr.shape}")
    check_finite(arr, name)
    if (arr < 0).any():
        i = int(np.argmax(arr < 0))
        raise ValueError(f"{name} must be non-negative, got {arr[i]} at index {i}")
    if not (allow_all_zero or arr.any()):
        raise ValueError(f"{name} is all zero: no row would count")
    return np.ascontiguousarray(arr, dtype=np.float64)
