"""Backend registry: reporting, selection by argument, process default and environment."""
import types

import numpy as np
import pytest

import fastnn
from fastnn import backends
from fastnn.kernels import INTERFACE


def test_every_backend_is_reported_with_a_reason():
    report = fastnn.available_backends()
    assert list(report) == list(backends.BACKENDS)
    assert report["reference"].usable and report["reference"].reason == "usable"
    for info in report.values():
        assert info.usable == (info.reason == "usable")
        assert info.reason


def test_reference_implements_the_interface():
    module = backends.resolve("reference")[1]
    assert all(callable(getattr(module, f)) for f in INTERFACE)


def test_a_backend_missing_a_kernel_is_unusable(monkeypatch):
    fake = types.ModuleType("fastnn.kernels.fake")
    fake.dense_forward = lambda *a: None
    monkeypatch.setattr(backends.importlib, "import_module", lambda name: fake)
    backends._probe.cache_clear()
    try:
        module, reason = backends._probe("cython")
        assert module is None and "lacks dense_backward" in reason
    finally:
        backends._probe.cache_clear()


def test_auto_picks_the_first_usable_backend():
    first = next(n for n, i in fastnn.available_backends().items() if i.usable)
    assert fastnn.Sequential([fastnn.Dense(2, 1)]).backend == first


def test_environment_and_process_default(monkeypatch):
    monkeypatch.setenv("FASTNN_BACKEND", "reference")
    assert fastnn.Sequential([fastnn.Dense(2, 1)]).backend == "reference"
    monkeypatch.setenv("FASTNN_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="FASTNN_BACKEND='nonsense' is not a backend"):
        fastnn.Sequential([fastnn.Dense(2, 1)])
    fastnn.set_backend("reference")            # the process default wins over the environment
    try:
        assert fastnn.Sequential([fastnn.Dense(2, 1)]).backend == "reference"
    finally:
        fastnn.set_backend(None)


def test_unusable_backend_raises_with_the_reason():
    unusable = [n for n, i in fastnn.available_backends().items() if not i.usable]
    if not unusable:
        pytest.skip("every backend is usable here")
    name = unusable[0]
    reason = fastnn.available_backends()[name].reason
    with pytest.raises(RuntimeError, match=f"backend '{name}' is"):
        fastnn.Sequential([fastnn.Dense(2, 1)], backend=name)
    with pytest.raises(RuntimeError) as err:
        fastnn.set_backend(name)
    assert reason in str(err.value)
    with pytest.raises(ValueError, match="not a backend"):
        fastnn.set_backend("gpu")


@pytest.mark.parametrize("backend", [n for n, i in fastnn.available_backends().items()
                                     if i.usable])
def test_same_seed_same_initial_weights(backend):
    def build(seed):
        return fastnn.Sequential([fastnn.Dense(6, 5, "relu"), fastnn.Dense(5, 2)],
                                 backend=backend, seed=seed).parameters()
    np.testing.assert_array_equal(build(4), build(4))
    assert not np.array_equal(build(4), build(5))


def test_the_cuda_driver_precheck_only_says_missing_when_numba_would(monkeypatch, tmp_path):
    """kernels/_cuda_driver.py: numba_cuda's quick answer on a machine without a GPU must
    never hide a driver numba-cuda would have found."""
    import sys

    from fastnn.kernels._cuda_driver import driver_missing

    def nothing_opens(path):
        raise OSError(f"{path}: cannot open shared object file")

    monkeypatch.chdir(tmp_path)
    for name in ("NUMBA_ENABLE_CUDASIM", "NUMBA_CUDA_DRIVER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    tried = []
    assert driver_missing(lambda path: tried.append(path) or nothing_opens(path))
    assert tried == ["libcuda.so", "libcuda.so.1", "/usr/lib/libcuda.so", "/usr/lib/libcuda.so.1",
                     "/usr/lib64/libcuda.so", "/usr/lib64/libcuda.so.1"]
    assert not driver_missing(lambda path: None if path == "/usr/lib64/libcuda.so.1"
                              else nothing_opens(path))
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    assert not driver_missing(nothing_opens)            # the simulator needs no driver
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM")
    monkeypatch.setenv("NUMBA_CUDA_DRIVER", "/opt/cuda/libcuda.so")
    assert not driver_missing(nothing_opens)            # numba-cuda looks there itself
    monkeypatch.delenv("NUMBA_CUDA_DRIVER")
    (tmp_path / ".numba_config.yaml").write_text("ENABLE_CUDASIM: 1\n")
    assert not driver_missing(nothing_opens)
    (tmp_path / ".numba_config.yaml").unlink()
    monkeypatch.setattr(sys, "platform", "win32")
    assert not driver_missing(nothing_opens)            # other systems: numba-cuda decides
