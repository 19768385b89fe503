"""Cython backend: the kernels compiled to C (BLAS matmuls, OpenMP loops where the build had it).

The fallback where Numba is missing, and the CPU default of ``"auto"`` where it is compiled:
it needs no JIT, so a first run trains at once. The code lives in the extension module
``_kernels``, built from ``_kernels.pyx`` by setup.py, and on x86-64 also in ``_kernels_avx2``
and ``_kernels_avx512``, the same code built for CPUs with AVX2 and FMA, and with AVX-512 as
well: the widest one the CPU runs is used. (The matmul micro-kernels pick AVX-512 or AVX2 at
run time in every build; the builds differ in the loops the compiler vectorises around them:
activations, gradients, losses, optimizer steps. On a Sapphire Rapids VM the avx512 build's
tiny and deep training steps were 5-10% faster than the avx2 build's, 2026-12-03.) Without
the extension this backend is unusable and says why.

Importing changes no process setting. The kernels split large matmuls across OpenMP threads,
each calling BLAS on its own band of rows, so BLAS must run one thread per call there: every
kernel call limits it for its own duration (``fastnn.kernels._threads``) and restores it.
"""
import functools
import importlib
import os

from .._threads import kernel_blas_threads

#: OpenMP's threads waiting at a barrier sleep instead of spinning (unless the user chose):
#: the trainer's parallel regions are coarse (a whole epoch; its per-stage barriers are its
#: own, spinning briefly before they sleep), so waking costs little, while spinning threads
#: take the cores from the working ones whenever the machine has other work (measured on 2
#: busy cores: 2-4× slower steps). The OpenMP runtime reads it once, when the extension below
#: loads it; the variable is set only for that import.
OMP_WAIT_POLICY = "PASSIVE"


def _import(name: str):
    """Import one build of the extension with OMP_WAIT_POLICY set for the OpenMP runtime it
    loads, leaving the environment as it was."""
    chosen = "OMP_WAIT_POLICY" in os.environ
    if not chosen:
        os.environ["OMP_WAIT_POLICY"] = OMP_WAIT_POLICY
    try:
        return importlib.import_module(name)
    finally:
        if not chosen:
            del os.environ["OMP_WAIT_POLICY"]


try:
    _kernels = _import(f"{__name__}._kernels")
except ImportError as exc:
    _missing = isinstance(exc, ModuleNotFoundError) and exc.name == f"{__name__}._kernels"
    raise ImportError(f"the compiled extension {__name__}._kernels "
                      + ("is missing: reinstall fastnn with a C compiler" if _missing
                         else f"failed to load: {exc}")) from exc

#: the builds of the extension by the CPU they need, widest first
SIMD_BUILDS = {"avx512": _kernels.cpu_has_avx512(), "avx2": _kernels.cpu_has_avx2_fma()}


def _simd_build():
    """The widest build that this CPU runs and this install has, or None."""
    for build, runs in SIMD_BUILDS.items():
        if runs:
            try:
                return _import(f"{__name__}._kernels_{build}")
            except ModuleNotFoundError as exc:   # an install without it (not gcc/clang)
                if exc.name != f"{__name__}._kernels_{build}":
                    raise
    return None


_kernels = _simd_build() or _kernels

#: the build in use: "avx512", "avx2" (x86-64 with AVX2 and FMA) or "baseline"
BUILD = next((b for b in SIMD_BUILDS if _kernels.__name__.endswith(f"_{b}")), "baseline")

OPENMP = _kernels.OPENMP


def _one_blas_thread(function):
    """``function`` with the kernels' BLAS on one thread for the call (with OpenMP, where the
    kernels split matmuls across their own threads)."""
    if not OPENMP:
        return function

    @functools.wraps(function)
    def call(*args):
        with kernel_blas_threads(1):
            return function(*args)
    return call


(adam, adamw, batchnorm_backward, batchnorm_forward, dense_backward, dense_forward, dropout, mse,
 rmsprop, sgd, sgd_momentum, sigmoid_binary_cross_entropy,
 softmax_cross_entropy) = map(_one_blas_thread, (
    _kernels.adam, _kernels.adamw, _kernels.batchnorm_backward, _kernels.batchnorm_forward,
    _kernels.dense_backward, _kernels.dense_forward, _kernels.dropout, _kernels.mse,
    _kernels.rmsprop,
    _kernels.sgd, _kernels.sgd_momentum, _kernels.sigmoid_binary_cross_entropy,
    _kernels.softmax_cross_entropy))
make_trainer = _kernels.make_trainer
make_predictor = _kernels.make_predictor

__all__ = ["BUILD", "OPENMP", "adam", "adamw", "batchnorm_backward", "batchnorm_forward",
           "dense_backward", "dense_forward", "dropout", "make_predictor", "make_trainer", "mse",
           "rmsprop", "sgd", "sgd_momentum", "sigmoid_binary_cross_entropy",
           "softmax_cross_entropy"]
