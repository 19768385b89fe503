"""The distribution works on its own: ``python -m build`` makes an sdist and, from it, a platform
wheel with the compiled kernels inside (the Cython extensions, and numba_cpu's kernels in
Numba's cache); the wheel installed into a fresh virtual environment (not editable, no source
tree on the path) runs ``fastnn info`` and a short training, trains on numba_cpu without
compiling, and imports from the repository root.

Slow (a build and an install with dependencies): marked ``wheel``, deselect with
``pytest -m "not wheel"``.
"""
import os
import platform
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.wheel

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = "Scripts" if os.name == "nt" else "bin"


def run(args, cwd, timeout=900) -> str:
    """Run a command outside the source tree's import path; fail with its output if it fails."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FASTNN_BACKEND")}
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """sdist and wheel built by ``python -m build`` (the wheel is built from the sdist)."""
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", out, ROOT], cwd=out)
    return out


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed (dependencies from the index)."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    run([sys.executable, "-m", "venv", env_dir], cwd=dist)
    (wheel,) = dist.glob("*.whl")
    run([env_dir / SCRIPTS / "python", "-m", "pip", "install", "--quiet", wheel], cwd=dist)
    return env_dir


def test_sdist_ships_the_cython_sources_not_build_outputs(dist):
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {"setup.py", "pyproject.toml", "kernels/cython/_kernels.pyx",
            "kernels/cython/_kernels_avx2.pyx", "kernels/cython/_kernels_avx512.pyx",
            "kernels/cython/__init__.py"} <= names
    assert not [n for n in names if n.endswith((".so", ".pyd", ".c"))]


def test_wheel_is_a_platform_wheel_with_the_compiled_kernels(dist):
    (wheel,) = dist.glob("*.whl")
    assert not wheel.name.endswith("-none-any.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert [n for n in names if n.startswith("fastnn/kernels/cython/_kernels.")
            and n.endswith((".so", ".pyd"))]
    if sys.platform.startswith("linux") and platform.machine() == "x86_64":   # gcc/clang
        for build in ("avx2", "avx512"):
            assert [n for n in names if n.startswith(f"fastnn/kernels/cython/_kernels_{build}.")
                    and n.endswith(".so")], build
    assert "fastnn/kernels/reference.py" in names and "fastnn/cli.py" in names


def test_installed_wheel_runs_info_and_trains_with_cython(venv, tmp_path):
    where = run([venv / SCRIPTS / "python", "-c",
                 "import fastnn.kernels.cython._kernels as k; print(k.__file__)"], cwd=tmp_path)
    assert Path(where.strip()).resolve().is_relative_to(venv.resolve())

    info = run([venv / SCRIPTS / "fastnn", "info"], cwd=tmp_path)
    reasons = dict(line.split(None, 1) for line in info.splitlines() if line.startswith("  "))
    assert reasons["cython"] == "usable", info

    trained = run([venv / SCRIPTS / "fastnn", "train", "--epochs", "2", "--backend", "cython",
                   "--verbose", "0"], cwd=tmp_path)
    assert "backend cython" in trained and "test accuracy" in trained, trained


def test_installed_package_imports_from_the_repository_root(venv):
    """In a clone, the source folder fastnn/ shadows the installed package and lacks kernels/;
    fastnn.kernels must still come from the installed copy."""
    where = run([venv / SCRIPTS / "python", "-c",
                 "import fastnn, fastnn.kernels.cython._kernels as k; print(k.__file__); "
                 "print(fastnn.available_backends()['cython'].reason)"], cwd=ROOT)
    path, reason = where.strip().splitlines()
    assert Path(path).resolve().is_relative_to(venv.resolve()) and reason == "usable", where


PRECOMPILED = """
import numpy as np
import fastnn
from fastnn.kernels.numba_cpu import interface, predict, trainer
X, y = np.random.rand(20, 3), np.random.randint(0, 2, 20)
for dtype in ("float32", "float64"):
    m = fastnn.Sequential([fastnn.Dense(3, 5, "tanh"), fastnn.Dense(5, 2)], backend="numba_cpu",
                          dtype=dtype)
    m.fit(X, y, loss="cross_entropy", epochs=1, validation_data=(X, y), verbose=0)
    m.predict(X)
kernels = (trainer.epoch_kernel, predict.predict_kernel, interface.loss_kernel)
print(sum(sum(k.stats.cache_hits.values()) for k in kernels),
      sum(sum(k.stats.cache_misses.values()) for k in kernels))
"""


@pytest.fixture(scope="module")
def pip_built_venv(dist, tmp_path_factory) -> Path:
    """A fresh virtual environment into which pip itself built and installed the sdist, as the
    README's ``pip install .`` does (pip's build isolation reaches the build requirements
    through PYTHONPATH, unlike ``python -m build``'s own environment)."""
    env_dir = tmp_path_factory.mktemp("pip_venv") / "env"
    run([sys.executable, "-m", "venv", env_dir], cwd=dist)
    (sdist,) = dist.glob("*.tar.gz")
    run([env_dir / SCRIPTS / "python", "-m", "pip", "install", "--quiet", sdist], cwd=dist)
    return env_dir


@pytest.mark.parametrize("installed", ["venv", "pip_built_venv"])
def test_installed_package_trains_on_numba_cpu_without_compiling(installed, request, tmp_path):
    """The build compiled numba_cpu's kernels into the package's Numba cache: on the machine
    that built it (the wheel by ``python -m build``, or pip from the sdist), the first fit
    (float32 and float64, with validation) loads them."""
    venv = request.getfixturevalue(installed)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    done = subprocess.run([venv / SCRIPTS / "python", "-c", PRECOMPILED], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    hits, misses = map(int, done.stdout.split())
    assert hits == 6 and misses == 0, done.stdout     # 3 kernels × 2 dtypes, all loaded
