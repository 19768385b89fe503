"""The numba_cuda (GPU) backend, checked on machines without a GPU.

* The shared kernel-vs-reference suite (tests/test_kernels.py, smaller bounds) and
  tests/numba_cuda_checks.py (multi-tile matmuls, device-side loss totals, the trainer's own
  kernels, ``fit`` through the device-resident trainer) run in child processes under Numba's
  CUDA simulator, which must be switched on (NUMBA_ENABLE_CUDASIM=1) before numba.cuda is
  first imported.
* tests/numba_cuda_ptx.py compiles every kernel for a real GPU (sm_90) where the CUDA
  toolkit is installed (no GPU needed), catching what the simulator (plain Python) cannot.
* Without a GPU and without the simulator, the backend reports why it is unusable.

Where a GPU is present the shared tests/test_kernels.py covers numba_cuda directly.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba_cuda", reason="numba-cuda is not installed (pip install numba-cuda)")

TESTS = Path(__file__).parent


#: bounds of the shared suite's generated cases under the simulator (about 30 s on 2 cores)
SIMULATOR_BOUNDS = {"FASTNN_TEST_MAX_BATCH": "33", "FASTNN_TEST_MAX_WIDTH": "40",
                    "FASTNN_TEST_EXAMPLES": "6"}


#: seconds a simulator suite may run before it counts as hung
SIMULATOR_TIMEOUT = 1200


def run(args, simulator: bool, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1" if simulator else "0", **SIMULATOR_BOUNDS)
    env.pop("FASTNN_BACKEND", None)
    return subprocess.run([sys.executable, *args], cwd=TESTS.parent, env=env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.mark.parametrize("suite", [["test_kernels.py", "-k", "numba_cuda"],
                                   ["numba_cuda_checks.py"]], ids=["shared", "cuda"])
def test_kernels_and_trainer_under_the_cuda_simulator(suite):
    # numba_cuda_checks.py alone runs ~250 s on a 2-core machine (2026-12-02; it was 571 s
    # before its fits were shortened), slower machines up to 2x that: the limit is for a hang
    result = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(TESTS / suite[0]),
                  *suite[1:]], simulator=True, timeout=SIMULATOR_TIMEOUT)
    output = result.stdout + result.stderr
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    assert result.returncode == 0, output[-8000:]
    # every check must have run: a skipped module (backend unusable) would hide them all
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary, output[-8000:]


def test_kernels_compile_for_a_real_gpu():
    result = run([str(TESTS / "numba_cuda_ptx.py")], simulator=False)
    if result.returncode == 3:
        pytest.skip(f"{result.stdout.strip()}: pip install 'numba-cuda[cu12]' to compile")
    assert result.returncode == 0, (result.stdout + result.stderr)[-8000:]


def test_reports_why_it_is_unusable_without_a_gpu():
    result = run(["-c", "from numba import cuda; import fastnn; "
                        "print(cuda.is_available()); "
                        "print(fastnn.available_backends()['numba_cuda'].reason)"],
                 simulator=False, timeout=120)
    assert result.returncode == 0, result.stderr
    has_gpu, reason = result.stdout.strip().splitlines()
    if has_gpu == "True":
        pytest.skip("a CUDA GPU is present")
    assert reason.startswith("not usable: no CUDA GPU found"), reason
