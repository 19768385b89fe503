"""Saving and loading models in a safe format: a .npz archive of plain arrays, no pickle.

The archive holds ``params`` (the flat parameter vector), ``state`` (BatchNorm running
statistics, Standardize's mean and std) and ``architecture`` (a JSON string). It is read with
``allow_pickle=False``, so a file carrying a pickled object is refused instead of executed.

The architecture carries the format name and version. Version 2 added layer types (Standardize,
Dropout), activations, and the optional ``"tabular"`` entry of a model trained from a CSV file
(its columns, their encoding and the target's labels: see :mod:`fastnn.tabular`). Every
version up to :data:`VERSION` is read; a newer file is refused with an error naming both
versions, since an older reader cannot know what the new entries mean.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from . import __version__
from .layers import from_config

FORMAT = "fastnn.Sequential"
#: the format version this fastnn writes; it reads versions 1 to VERSION
VERSION = 2


def save(model, path: str | os.PathLike, tabular: dict | None = None) -> None:
    """Write ``model`` to ``path`` exactly (no extension is added); ``tabular`` is the JSON
    description of a CSV model's encoding (see :mod:`fastnn.tabular`)."""
    architecture = {"format": FORMAT, "version": VERSION, **model.get_config()}
    if tabular is not None:
        architecture["tabular"] = tabular
    with open(path, "wb") as fh:
        np.savez(fh, params=model.parameters(), state=model._state,
                 architecture=np.array(json.dumps(architecture)))


def load(path: str | os.PathLike, backend: str = "auto"):
    """Read a model written by ``model.save``; raise ValueError for anything else.

    For a model trained from a CSV file this is its network, which takes the encoded rows
    (``fastnn.tabular.load`` gives the whole model, encoding included)."""
    return read(path, backend)[0]


def read(path: str | os.PathLike, backend: str = "auto"):
    """(model, tabular): the model written to ``path`` and its ``"tabular"`` entry (None for
    a model not trained from a CSV file)."""
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
    version = architecture.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{os.fspath(path)!r} has a malformed format version {version!r}")
    if version > VERSION:
        raise ValueError(f"{os.fspath(path)!r} has format version {version}, written by a "
                         f"newer fastnn; this fastnn ({__version__}) reads format versions 1 "
                         f"to {VERSION}: upgrade fastnn to load it")
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
    return model, architecture.get("tabular")
