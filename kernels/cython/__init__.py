"""Cython backend: the kernels compiled to C (BLAS matmuls, OpenMP loops where the build had it).

The fallback where Numba is missing. The code lives in the extension module ``_kernels``, built
from ``_kernels.pyx`` by setup.py, and on x86-64 also in ``_kernels_avx2``, the same code built
for CPUs with AVX2 and FMA, which is used where the CPU has them. Without the extension this
backend is unusable and says why.
"""
import importlib
import os

# Threads waiting at a barrier sleep instead of spinning (unless the user chose otherwise):
# the kernels' parallel regions are coarse (a whole epoch, two barriers per minibatch), so
# waking costs little, while spinning threads take the cores from the working ones whenever
# the machine has other work (measured on 2 busy cores: 2-4× slower steps). Read by the OpenMP
# runtime when it loads, which is when the extension below is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    _kernels = importlib.import_module(f"{__name__}._kernels")
except ImportError as exc:
    _missing = isinstance(exc, ModuleNotFoundError) and exc.name == f"{__name__}._kernels"
    raise ImportError(f"the compiled extension {__name__}._kernels "
                      + ("is missing: reinstall fastnn with a C compiler" if _missing
                         else f"failed to load: {exc}")) from exc

if _kernels.cpu_has_avx2_fma():
    try:
        _kernels = importlib.import_module(f"{__name__}._kernels_avx2")
    except ModuleNotFoundError as exc:         # a build without the variant (not gcc/clang)
        if exc.name != f"{__name__}._kernels_avx2":
            raise

#: the build in use: "avx2" (x86-64 with AVX2 and FMA) or "baseline"
BUILD = "avx2" if _kernels.__name__.endswith("_avx2") else "baseline"

OPENMP = _kernels.OPENMP
(adam, batchnorm_backward, batchnorm_forward, dense_backward, dense_forward, make_trainer, mse,
 sgd, sgd_momentum, sigmoid_binary_cross_entropy, softmax_cross_entropy) = (
    _kernels.adam, _kernels.batchnorm_backward, _kernels.batchnorm_forward,
    _kernels.dense_backward, _kernels.dense_forward, _kernels.make_trainer, _kernels.mse,
    _kernels.sgd, _kernels.sgd_momentum, _kernels.sigmoid_binary_cross_entropy,
    _kernels.softmax_cross_entropy)

if OPENMP:
    # the kernels split large matmuls across OpenMP threads, each calling BLAS on its own band
    # of rows: BLAS itself must then run one thread per call (as for numba_cpu, see
    # fastnn.threads), or the two thread pools would stack
    from ...threads import pin_kernel_blas

    pin_kernel_blas()

__all__ = ["BUILD", "OPENMP", "adam", "batchnorm_backward", "batchnorm_forward",
           "dense_backward", "dense_forward", "make_trainer", "mse", "sgd", "sgd_momentum",
           "sigmoid_binary_cross_entropy", "softmax_cross_entropy"]
