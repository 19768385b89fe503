"""The benchmark module's bookkeeping (FLOP counts, ratios, targets) and ``fastnn bench``."""
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fastnn import backends
from fastnn import benchmark as bm

REPO = Path(__file__).resolve().parents[1]
#: every CPU contender; a peer that is not installed (as in CI) is skipped, never needed
CPU_CONTENDERS = [pytest.param(name, marks=pytest.mark.skipif(why != "usable", reason=why))
                  for name, why in bm.contenders().items() if bm.device_of(name) == "cpu"]


def test_step_flops_count_every_matmul():
    """Forward: X·W per layer; backward: Xᵀ·dZ per layer and dZ·Wᵀ except for the first."""
    config = bm.Config("t", (5, 7, 3), batch=4, activation="relu", loss="mse", steps=1)
    forward = 2 * 4 * 5 * 7 + 2 * 4 * 7 * 3
    dW = forward
    dX = 2 * 4 * 7 * 3
    assert config.forward_flops == forward
    assert config.step_flops == forward + dW + dX


@pytest.mark.parametrize("kernel, said", [("avx2", "own avx2 kernel up to MLP sizes, then BLAS"),
                                           ("avx512", "own avx512 kernel up to MLP sizes, "
                                                      "then BLAS"),
                                           (None, "BLAS")])
def test_machine_says_which_matmul_fastnn_runs(monkeypatch, kernel, said):
    """The tables' header names the float32 matmul kernel the CPU backends ran on."""
    _kernels = pytest.importorskip("fastnn.kernels.cython")._kernels
    monkeypatch.setattr(_kernels, "own_gemm_kernel", lambda: kernel)
    assert bm.machine()["fastnn_matmul"] == said


def test_contenders_follow_the_registry_reference_first():
    found = bm.contenders()
    assert next(iter(found)) == "reference"
    for name, info in backends.available_backends().items():
        assert name in found
        if not info.usable:
            assert found[name] == info.reason
    assert set(bm.PEERS) <= set(found)


def test_ratios_peak_fraction_and_targets():
    tiny = bm.CONFIGS["tiny"]
    results = bm.Results(threads=2, peaks={"cpu": 100.0})
    results.add(tiny, "train", "reference", 40e-6)
    results.add(tiny, "train", "torch_cpu", 160e-6)
    fast = results.add(tiny, "train", "numba_cpu", 10e-6)
    slow = results.add(bm.CONFIGS["deep"], "train", "numba_cpu", 1e-3)
    assert fast.vs_reference == pytest.approx(4.0) and fast.vs_torch == pytest.approx(16.0)
    assert fast.vs_jax is None
    results.add(tiny, "train", "jax_cpu", 20e-6)
    assert fast.vs_jax == pytest.approx(2.0)
    assert fast.peak_fraction == pytest.approx(tiny.step_flops / 10e-6 / 1e9 / 100.0)
    assert slow.vs_reference is None and slow.vs_torch is None
    table = results.table()
    assert "≥4 ok / ≥15 ok" in table and "≥2.5 ? / ≥6 ?" in table
    results.add(bm.CONFIGS["deep"], "train", "reference", 1e-3)
    assert "≥2.5 MISS / ≥6 ?" in results.table()
    results.update_peaks({"cpu": 50.0})           # a peak taken under load does not count
    assert results.peaks["cpu"] == 100.0
    results.update_peaks({"cpu": 200.0})
    assert fast.peak_fraction == pytest.approx(tiny.step_flops / 10e-6 / 1e9 / 200.0)


def test_float64_table_states_the_dtype_and_its_targets():
    """float64 has its own target (issue 14: numba_cpu ≥ 1× the float64 reference), not
    float32's."""
    tiny = bm.CONFIGS["tiny"]
    results = bm.Results(threads=2, peaks={"cpu": 50.0}, dtype="float64")
    results.add(tiny, "train", "reference", 40e-6)
    results.add(tiny, "train", "numba_cpu", 20e-6)
    results.add(tiny, "train", "cython", 20e-6)
    table = results.table()
    assert "dtype: float64" in table and "≥1 ok / -" in table and "≥4" not in table
    assert table.count("≥") == 1                  # cython has no float64 target
    assert results.to_json()["dtype"] == "float64"


@pytest.mark.parametrize("contender", CPU_CONTENDERS)
def test_float64_trains_every_contender_in_float64(contender):
    """The data, the fastnn model (a peer's initial weights), the weights trained and the
    predictions are float64; so are a peer's own tensors."""
    contest = bm.Contest(bm.CONFIGS["tiny"], contender, 1, predict_samples=8, dtype="float64")
    assert contest.X.dtype == contest.y.dtype == contest.model.dtype == np.float64
    before = contest.parameters()
    contest.train()
    after = contest.parameters()
    assert before.dtype == after.dtype == contest.predict().dtype == np.float64
    assert not np.array_equal(before, after)
    if contender in bm.TORCH_PEERS:
        import torch
        tensors = [*contest.peer.net.parameters(), *(t for b in contest.peer.batches for t in b)]
        assert {t.dtype for t in tensors} == {torch.float64}
    if contender == "jax_cpu":
        arrays = [contest.peer.X, contest.peer.Y, *(a for layer in contest.peer.params
                                                    for a in layer)]
        assert {a.dtype for a in arrays} == {np.dtype("float64")}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fastnn_bench_prints_the_table_and_writes_json(tmp_path, dtype):
    out_file = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "fastnn", "bench", "--configs", "tiny", "--backends",
         "reference", "--rounds", "1", "--threads", "1", "--dtype", dtype,
         "--json", str(out_file)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "µs/step" in result.stdout and "tiny" in result.stdout
    assert f"dtype: {dtype}" in result.stdout
    data = json.loads(out_file.read_text())
    assert data["dtype"] == dtype
    assert data["threads"] == 1 and data["peaks"]["cpu"] > 0
    [row] = data["rows"]
    assert row["contender"] == "reference" and row["vs_reference"] == 1.0
    assert row["us_per_step"] > 0


def test_pytest_bench_runs_in_the_dtype_asked_for():
    """``--bench-dtype`` reaches the suite, whose train test checks the trained dtype."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "bench/test_bench.py", "--bench-dtype", "float64",
         "--benchmark-disable", "-p", "no:cacheprovider", "-k", "tiny-reference"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fastnn bench: dtype float64" in result.stdout and "1 passed" in result.stdout


@pytest.mark.parametrize("command, code, message", [
    (["fastnn", "bench", "--rounds", "0"], 2, "rounds"),
    (["fastnn", "bench", "--dtype", "float16"], 2, "invalid choice: 'float16'"),
    (["fastnn", "bench", "--sklearn", "--dtype", "float64"], 2,
     "--dtype: not used with --sklearn"),
    (["fastnn", "bench", "--sklearn", "--json", "out.json", "--configs", "tiny"], 2,
     "--configs, --json: not used with --sklearn"),
    (["fastnn", "bench", "--sklearn-cases", "digits"], 2, "--sklearn-cases needs --sklearn"),
    (["pytest", "bench/", "--bench-dtype", "int8"], 4, "invalid choice: 'int8'"),
])
def test_fastnn_bench_rejects_bad_options(command, code, message):
    result = subprocess.run([sys.executable, "-m", *command], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == code and message in result.stderr


def test_a_bad_dtype_is_named_in_the_error():
    with pytest.raises(ValueError, match="unknown dtype 'float16'; choose one of 'float32', "
                                         "'float64'"):
        bm.Contest(bm.CONFIGS["tiny"], "reference", 1, dtype="float16")
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        bm.run(["tiny"], ["reference"], threads=1, rounds=1, dtype="int8")


def test_time_call_repeats_short_calls_for_the_minimum_time_and_keeps_the_fastest():
    durations = iter([0.02, 0.001, 0.015] + [0.01] * 1000)
    calls = []

    def call():
        calls.append(1)
        time.sleep(next(durations))
    best = bm.time_call(call, rounds=2, min_seconds=0.1)
    assert len(calls) > 3                       # past the 2 rounds until 0.1 s had passed
    assert 0.001 <= best < 0.009
    calls.clear()
    assert bm.time_call(lambda: calls.append(time.sleep(0.002)), rounds=3) >= 0.002
    assert len(calls) == 3                      # no minimum time: exactly the rounds
