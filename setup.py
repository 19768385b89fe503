"""Build script: the package metadata is in pyproject.toml; this file adds the compiled parts.

It also compiles the numba_cpu backend's kernels (float32 and float64) once, into the built
package's Numba
cache (``fastnn/kernels/numba_cpu/__pycache__``), which the wheel carries: Numba keys a cached
kernel by the content of its source file and by the CPU it was compiled for, so on the machine
that built the wheel (``pip install .``) the first numba_cpu fit loads machine code instead of
compiling for ~25 s (the build takes about a minute longer). Elsewhere (another CPU) the cache
is not used and Numba compiles as usual, as it does when ``NUMBA_CACHE_DIR`` points Numba at
another cache. Editable installs skip it (their kernels compile, and cache, on first use);
``FASTNN_PRECOMPILE=0`` skips it too.

The Cython backend is the extension module ``fastnn.kernels.cython._kernels``, plus on x86-64
(gcc or clang) the same source compiled for CPUs with AVX2 and FMA, ``_kernels_avx2``, and
with AVX-512 (F, VL, BW, DQ) as well, ``_kernels_avx512``: ``fastnn.kernels.cython`` imports
the widest one the CPU runs. All are built with OpenMP
when the compiler can compile and link a small OpenMP program, and without it otherwise
(Apple's clang, for one): the loops then run on one thread and the install still succeeds. A
machine without a working C compiler stops the build with a message that says so.
"""
import os
import subprocess
import sys
import tempfile

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py
from setuptools.errors import BaseError, CCompilerError, PlatformError

EXTENSION = "fastnn.kernels.cython._kernels"
AVX2_EXTENSION = "fastnn.kernels.cython._kernels_avx2"
AVX512_EXTENSION = "fastnn.kernels.cython._kernels_avx512"

#: Cython directives of every build: no index checks (the def functions check shapes)
DIRECTIVES = {"language_level": 3, "boundscheck": False, "wraparound": False,
              "cdivision": True, "initializedcheck": False, "nonecheck": False}

NO_COMPILER = (
    f"fastnn needs a C compiler to build its Cython kernels ({EXTENSION}), and none works "
    "here. Install one (Linux: gcc, e.g. `apt-get install build-essential`; macOS: "
    "`xcode-select --install`; Windows: Microsoft C++ Build Tools), or install a prebuilt "
    "fastnn wheel.")

OPENMP_TEST = """\
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+: n)
    n += omp_get_num_threads() > 0;
    return n > 0 ? 0 : 1;
}
"""

AVX2_FLAGS = ["-mavx2", "-mfma"]
AVX2_TEST = """\
#include <immintrin.h>
int main(void) {
    __m256 a = _mm256_set1_ps(1.0f);
    a = _mm256_fmadd_ps(a, a, a);
    return (int) _mm256_cvtss_f32(a) + __builtin_cpu_supports("avx2");
}
"""
AVX512_FLAGS = AVX2_FLAGS + ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq"]
AVX512_TEST = """\
#include <immintrin.h>
int main(void) {
    __m512 a = _mm512_set1_ps(1.0f);
    a = _mm512_fmadd_ps(a, a, a);
    return (int) _mm512_reduce_add_ps(a) + __builtin_cpu_supports("avx512f");
}
"""
#: each SIMD build: its flags and the program that the compiler must build with them
SIMD_EXTENSIONS = {AVX2_EXTENSION: (AVX2_FLAGS, AVX2_TEST),
                   AVX512_EXTENSION: (AVX512_FLAGS, AVX512_TEST)}


def compiles(compiler, source: str, flags: list[str], link_flags: list[str]) -> bool:
    """Whether ``compiler`` compiles and links ``source`` into a program with these flags."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.c")
        with open(path, "w") as f:
            f.write(source)
        try:
            objects = compiler.compile([path], output_dir=tmp, extra_postargs=flags)
            compiler.link_executable(objects, "probe", output_dir=tmp,
                                     extra_postargs=link_flags)
        except (CCompilerError, BaseError, OSError):
            return False
    return True


class BuildExt(build_ext):
    """build_ext that checks for a C compiler first, adds OpenMP where it works and builds the
    AVX2 and AVX-512 variants only where the compiler targets x86-64 with gcc/clang flags."""

    def build_extensions(self):
        if not compiles(self.compiler, "int main(void) { return 0; }\n", [], []):
            raise PlatformError(NO_COMPILER)
        msvc = self.compiler.compiler_type == "msvc"
        flags = ["/openmp"] if msvc else ["-fopenmp"]
        link_flags = [] if msvc else ["-fopenmp"]
        openmp = compiles(self.compiler, OPENMP_TEST, flags, link_flags)
        if not openmp:
            print(f"fastnn: the C compiler does not support OpenMP here; building {EXTENSION} "
                  f"without it (its loops run on one thread, BLAS keeps its own threads)",
                  file=sys.stderr)
        self.extensions = [e for e in self.extensions if e.name not in SIMD_EXTENSIONS or (
            not msvc and compiles(self.compiler, SIMD_EXTENSIONS[e.name][1],
                                  SIMD_EXTENSIONS[e.name][0], []))]
        # libm calls need not set errno and float compares need not trap: both let gcc/clang
        # vectorise the activation loops (sqrt, exp's selects); neither changes any result
        fast_math = [] if msvc else ["-fno-math-errno", "-fno-trapping-math"]
        for ext in self.extensions:
            ext.extra_compile_args += fast_math + (flags if openmp else [])
            ext.extra_compile_args += SIMD_EXTENSIONS.get(ext.name, ([], None))[0]
            ext.extra_link_args += link_flags if openmp else []
        super().build_extensions()


#: what the build runs to fill numba_cpu's cache: a fit with every op kind and a validation pass
#: (the epoch kernel, and the fused forward pass and loss kernels), then a predict
NUMBA_WARMUP = """
import numpy as np
import fastnn
rng = np.random.default_rng(0)
X, y = rng.standard_normal((64, 4)), rng.integers(0, 2, 64)
for dtype in ("float32", "float64"):
    model = fastnn.Sequential([fastnn.Dense(4, 8, "relu"), fastnn.BatchNorm(8),
                               fastnn.Residual(fastnn.Dense(8, 8, "tanh")), fastnn.Dense(8, 2)],
                              backend="numba_cpu", dtype=dtype)
    model.fit(X, y, loss="cross_entropy", epochs=1, validation_data=(X, y), verbose=0)
    model.predict(X)
"""


class BuildPy(build_py):
    """build_py that then compiles numba_cpu's kernels into the build's Numba cache
    (see the module docstring). A failure only costs the first numba_cpu fit its compile."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False) or os.environ.get("FASTNN_PRECOMPILE") == "0":
            return
        env = {k: v for k, v in os.environ.items()
               if k not in ("NUMBA_CACHE_DIR", "NUMBA_DISABLE_JIT", "FASTNN_BACKEND")}
        # the built package first; then whatever PYTHONPATH held: pip's isolated build puts
        # the build requirements (numpy, numba, ...) on the path through it
        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.abspath(self.build_lib)] + [p for p in [env.get("PYTHONPATH")] if p])
        print("fastnn: compiling the numba_cpu kernels into the package's cache (~1 min)",
              file=sys.stderr, flush=True)
        try:
            subprocess.run([sys.executable, "-c", NUMBA_WARMUP], env=env, check=True,
                           timeout=900, cwd=self.build_lib)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"fastnn: numba_cpu's kernels were not precompiled ({exc}); its first fit "
                  f"will compile them", file=sys.stderr)


setup(
    ext_modules=cythonize(
        [Extension(EXTENSION, ["kernels/cython/_kernels.pyx"]),
         Extension(AVX2_EXTENSION, ["kernels/cython/_kernels_avx2.pyx"]),
         Extension(AVX512_EXTENSION, ["kernels/cython/_kernels_avx512.pyx"])],
        compiler_directives=DIRECTIVES,
    ),
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
)
