"""Whether a CUDA driver library can be opened, found the way numba-cuda finds it, without
importing ``numba.cuda``: that import costs ~1.7 s on a machine with numba-cuda installed and
no GPU (measured: 2.0 s to learn that the numba_cuda backend is unusable, 0.4 s for the rest
of fastnn), and ``backend="auto"`` asks first. The numba_cuda backend calls this before
anything else, so a CPU machine's first ``fastnn train`` does not pay for it.
"""
from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from itertools import product

#: numba-cuda's search on Linux (numba.cuda.cudadrv.driver.locate_driver_and_loader): the
#: names on the library path, then in these directories
NAMES = ("libcuda.so", "libcuda.so.1")
DIRECTORIES = ("/usr/lib", "/usr/lib64")


def driver_missing(load: Callable[[str], object] = ctypes.CDLL) -> bool:
    """True only where numba-cuda's own search would fail for certain: Linux, neither
    Numba's CUDA simulator nor a driver path (``NUMBA_CUDA_DRIVER``) asked for, no Numba
    config file that could ask for either, and none of the candidates opens."""
    if not sys.platform.startswith("linux") or os.environ.get("NUMBA_ENABLE_CUDASIM", "0") != "0" \
            or os.environ.get("NUMBA_CUDA_DRIVER") or os.path.exists(".numba_config.yaml"):
        return False
    for path in (*NAMES, *(os.path.join(d, n) for d, n in product(DIRECTORIES, NAMES))):
        try:
            load(path)
        except OSError:
            continue
        return False
    return True
