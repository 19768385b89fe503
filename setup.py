"""Build script: the package metadata is in pyproject.toml; this file adds the compiled parts.

The Cython backend is one extension module, ``fastnn.kernels.cython._kernels``. It is built with
OpenMP when the compiler can compile and link a small OpenMP program, and without it otherwise
(Apple's clang, for one): its loops then run on one thread and the install still succeeds. A
machine without a working C compiler stops the build with a message that says so.
"""
import os
import sys
import tempfile

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import BaseError, CCompilerError, PlatformError

EXTENSION = "fastnn.kernels.cython._kernels"

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
    """build_ext that checks for a C compiler first and adds OpenMP where it works."""

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
        # libm calls need not set errno and float compares need not trap: both let gcc/clang
        # vectorise the activation loops (sqrt, exp's selects); neither changes any result
        fast_math = [] if msvc else ["-fno-math-errno", "-fno-trapping-math"]
        for ext in self.extensions:
            ext.extra_compile_args += fast_math + (flags if openmp else [])
            ext.extra_link_args += link_flags if openmp else []
        super().build_extensions()


setup(
    ext_modules=cythonize(
        [Extension(EXTENSION, ["kernels/cython/_kernels.pyx"])],
        compiler_directives={"language_level": 3},
    ),
    cmdclass={"build_ext": BuildExt},
)
