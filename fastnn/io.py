"""Saving and loading models in a safe format: a .npz archive of plain arrays, no pickle.

The archive holds ``params`` (the flat parameter vector), ``state`` (BatchNorm running
statistics) and ``architecture`` (a JSON string). It is read with ``allow_pickle=False``, so a
file carrying a pickled object is refused instead of executed.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from .layers import from_config

FORMAT = "fastnn.Sequential"
VERSION = 1


def save(model, path: str | os.PathLike) -> None:
    """Write ``model`` to ``path`` exactly (no extension is added)."""
    architecture = {"format": FORMAT, "version": VERSION, **model.get_config()}
    with open(path, "wb") as fh:
        np.savez(fh, params=model.parameters(), state=model._state,
                 architecture=np.array(json.dumps(architecture)))


def load(path: str | os.PathLike, backend: str = "auto"):
    """Read a model written by ``model.save``; raise ValueError for anything else."""
    from .model import Sequential

    with open(path, "rb") as fh:               # FileNotFoundError stays what it is
        is_archive = zipfile.is_zipfile(fh)
    if not is_archive:
        raise ValueError(f"{os.fspath(path)!r} is not a valid fastnn model file (not an .npz "
                         f"archive: corrupted, truncated or another kind of file)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"params", "state", "architecture"} - set(archive.files)
            if missing:
                raise ValueError(f"it lacks {', '.join(sorted(missing))}")
            params, state = archive["params"], archive["state"]
            architecture = json.loads(str(archive["architecture"]))
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise ValueError(f"refusing to load {os.fspath(path)!r}: it contains a pickled "
                             f"object, which fastnn never unpickles") from None
        raise ValueError(f"{os.fspath(path)!r} is not a valid fastnn model file: {exc}") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{os.fspath(path)!r} is not a valid fastnn model file (corrupted or "
                         f"truncated?): {exc}") from None
    if not isinstance(architecture, dict) or architecture.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not a fastnn model file")
    if architecture.get("version") != VERSION:
        raise ValueError(f"{os.fspath(path)!r} has format version "
                         f"{architecture.get('version')}; this fastnn reads {VERSION}")
    try:
        model = Sequential([from_config(c) for c in architecture["layers"]], backend=backend,
                           seed=architecture["seed"], dtype=architecture["dtype"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{os.fspath(path)!r} has a malformed architecture: {exc}") from None
    for name, stored, target in (("params", params, model.parameters()),
                                 ("state", state, model._state)):
        if stored.shape != target.shape or stored.dtype != target.dtype:
            raise ValueError(f"{os.fspath(path)!r}: {name} has shape {stored.shape} and dtype "
                             f"{stored.dtype}, but the architecture needs {target.shape} "
                             f"{target.dtype}")
        target[...] = stored
    return model
