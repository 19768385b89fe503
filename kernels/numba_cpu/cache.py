"""Numba's on-disk cache of this backend's kernels: whether it is warm (``fastnn info``), and
dropping it when the package's sources change.

Compiling every kernel takes tens of seconds; with ``cache=True`` a later process loads the
machine code instead. This reads Numba's cache index of each kernel (a private Numba API,
hence the guard): an index whose source stamp no longer matches the file counts as cold.
"""
from __future__ import annotations

import glob
import hashlib
import os
from typing import NamedTuple


class CacheStatus(NamedTuple):
    directory: str      # where Numba keeps this backend's cache ("" if unknown)
    compiled: int       # kernels with at least one cached signature
    total: int          # kernels that are cached on disk when compiled
    signatures: int     # cached signatures over all kernels
    trainer_warm: bool  # the fused epoch (what fit runs) is cached, for some dtype


def _kernels():
    from .batchnorm import bn_backward_kernel, bn_forward_kernel
    from .dense import dense_backward_kernel, dense_forward_kernel
    from .dropout import dropout_kernel
    from .losses import loss_kernel
    from .optimizers import update_kernel
    from .predict import predict_kernel
    from .trainer import _row_actions, epoch_kernel

    return (dense_forward_kernel, dense_backward_kernel, loss_kernel, update_kernel,
            bn_forward_kernel, bn_backward_kernel, dropout_kernel, _row_actions, epoch_kernel,
            predict_kernel)


def cache_status() -> CacheStatus:
    """How many of the backend's kernels have compiled code in the on-disk cache."""
    directory, counts = "", []
    kernels = _kernels()
    for kernel in kernels:
        try:
            cache = kernel._cache
            directory = cache._cache_path
            counts.append(len(cache._cache_file._load_index()))
        except (AttributeError, OSError):
            counts.append(0)
    return CacheStatus(directory, sum(c > 0 for c in counts), len(kernels), sum(counts),
                       all(counts[-2:]))


def _sources() -> list[str]:
    """The files whose contents the kernels are compiled from: this package's modules,
    ``fastnn/kernels/__init__.py``, whose codes (activations, the plan's columns) they inline,
    and ``fastnn/kernels/_teams.py`` (the fewest rows of a chunk)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return sorted(glob.glob(os.path.join(here, "*.py"))) + [
        os.path.join(os.path.dirname(here), name) for name in ("__init__.py", "_teams.py")]


def drop_stale_cache() -> None:
    """Delete this package's cached kernels when any of the sources they are compiled from
    changed.

    Numba checks a cached kernel only against the file that defines it, but the kernels inline
    helpers and constants from the package's other modules and from ``fastnn.kernels``: after
    editing ``_split.py`` alone, the trainer kept running code compiled with the old constant
    (and wrote past its buffers). A digest of every such source, stored beside the cache,
    catches that.
    """
    digest = hashlib.sha256()
    for path in _sources():
        with open(path, "rb") as f:
            digest.update(f.read())
    try:
        directory = _kernels()[0]._cache._cache_path
    except AttributeError:
        return
    stamp = os.path.join(directory, "fastnn-sources.sha256")
    try:
        with open(stamp) as f:
            if f.read() == digest.hexdigest():
                return
    except OSError:
        pass
    try:
        for path in glob.glob(os.path.join(directory, "*.nb[ic]")):
            os.remove(path)
        with open(stamp, "w") as f:
            f.write(digest.hexdigest())
    except OSError:                                      # read-only install: nothing to do
        pass
