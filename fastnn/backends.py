"""Backend registry: which kernel modules can run here, and which one a model uses.

A backend is a module ``fastnn.kernels.<name>`` that defines every function of
``fastnn.kernels.INTERFACE``. Importing it must fail with an ImportError whose message says why
when the backend cannot run on this machine (package missing, extension not compiled, no GPU);
that message is what :func:`available_backends` reports.
"""
from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType
from typing import NamedTuple

from .kernels import INTERFACE

#: all backends in the order in which "auto" picks. On a CPU, cython comes before numba_cpu:
#: both are fused and about as fast once compiled (bench/README.md: within 0.8-1.0× of each
#: other on every benchmark network), but cython was compiled when fastnn was installed, while
#: numba_cpu's first fit in a fresh environment JIT-compiles for 15-30 s. The first run is part
#: of the product; numba_cpu stays one argument away (backend="numba_cpu").
BACKENDS = ("numba_cuda", "cython", "numba_cpu", "reference")

_process_default: str | None = None


class BackendInfo(NamedTuple):
    """Whether a backend can run here and, if not, why."""

    usable: bool
    reason: str


@functools.cache
def _probe(name: str) -> tuple[ModuleType | None, str]:
    """Import a backend once; return (module, "usable") or (None, why not)."""
    module_name = f"{__package__}.kernels.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None, "not yet available: this version of fastnn does not implement it"
        return None, f"not usable: {exc}"
    except ImportError as exc:
        return None, f"not usable: {exc}"
    missing = [f for f in INTERFACE if not callable(getattr(module, f, None))]
    if missing:
        return None, f"not usable: the module lacks {', '.join(missing)}"
    return module, "usable"


def available_backends() -> dict[str, BackendInfo]:
    """Report every backend, fastest first, with whether it is usable here and why not."""
    return {name: BackendInfo(_probe(name)[0] is not None, _probe(name)[1]) for name in BACKENDS}


def _check_name(name: str, argument: str) -> None:
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"{argument}={name!r} is not a backend; choose 'auto' or one of "
                         f"{', '.join(map(repr, BACKENDS))}")


def set_backend(name: str | None) -> None:
    """Set the backend that models created with ``backend="auto"`` use in this process.

    ``None`` or ``"auto"`` restores automatic choice (``FASTNN_BACKEND`` if set, else the fastest
    usable backend). Naming an unusable backend raises RuntimeError with the reason.
    """
    global _process_default
    if name is not None:
        _check_name(name, "backend")
        if name != "auto":
            resolve(name)
    _process_default = None if name in (None, "auto") else name


def resolve(name: str = "auto") -> tuple[str, ModuleType]:
    """Return (backend name, kernel module) for a model's ``backend`` argument.

    "auto" means: the process default from :func:`set_backend`, else ``FASTNN_BACKEND``, else
    the first usable backend of :data:`BACKENDS`. A named backend that cannot run raises
    RuntimeError; there is never a silent fallback.
    """
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {type(name).__name__}")
    _check_name(name, "backend")
    if name == "auto":
        env = os.environ.get("FASTNN_BACKEND", "").strip()
        if _process_default is not None:
            name = _process_default
        elif env and env != "auto":
            _check_name(env, "FASTNN_BACKEND")
            name = env
        else:
            return next((n, m) for n in BACKENDS if (m := _probe(n)[0]) is not None)
    module, reason = _probe(name)
    if module is None:
        raise RuntimeError(f"backend {name!r} is {reason}")
    return name, module
