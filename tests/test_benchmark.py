"""The benchmark module's bookkeeping (FLOP counts, ratios, targets) and ``fastnn bench``."""
import json
import subprocess
import sys

import pytest

from fastnn import backends
from fastnn import benchmark as bm


def test_step_flops_count_every_matmul():
    """Forward: X·W per layer; backward: Xᵀ·dZ per layer and dZ·Wᵀ except for the first."""
    config = bm.Config("t", (5, 7, 3), batch=4, activation="relu", loss="mse", steps=1)
    forward = 2 * 4 * 5 * 7 + 2 * 4 * 7 * 3
    dW = forward
    dX = 2 * 4 * 7 * 3
    assert config.forward_flops == forward
    assert config.step_flops == forward + dW + dX


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


def test_fastnn_bench_prints_the_table_and_writes_json(tmp_path):
    out_file = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "fastnn", "bench", "--configs", "tiny", "--backends",
         "reference", "--rounds", "1", "--threads", "1", "--json", str(out_file)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "µs/step" in result.stdout and "tiny" in result.stdout
    data = json.loads(out_file.read_text())
    assert data["threads"] == 1 and data["peaks"]["cpu"] > 0
    [row] = data["rows"]
    assert row["contender"] == "reference" and row["vs_reference"] == 1.0
    assert row["us_per_step"] > 0


def test_fastnn_bench_rejects_bad_options():
    result = subprocess.run([sys.executable, "-m", "fastnn", "bench", "--rounds", "0"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "rounds" in result.stderr
