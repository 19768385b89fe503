"""fastnn.distributed on 2 MPI ranks: each test launches ``mpiexec -n 2 <python> -m mpi4py
tests/mpi_checks.py ...`` (the mpiexec next to sys.executable, from the mpich wheel of the
mpi extra) with a timeout, and reads what the ranks print."""
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None,
                                reason="mpi4py is not installed (pip install 'fastnn[mpi]'; "
                                       "the test extra includes it)")

CHECKS = Path(__file__).with_name("mpi_checks.py")
ROOT = CHECKS.parent.parent
MPIEXEC = Path(sys.executable).with_name("mpiexec")
TIMEOUT = 120


def launch(*args, module=True, timeout=TIMEOUT):
    """Run ``args`` on 2 ranks; (CompletedProcess, seconds)."""
    assert MPIEXEC.exists(), (f"no mpiexec next to {sys.executable}: install the mpi extra "
                              f"(pip install 'fastnn[mpi]', which brings the mpich wheel)")
    python = [sys.executable, "-m", "mpi4py"] if module else [sys.executable]
    start = time.perf_counter()
    done = subprocess.run([str(MPIEXEC), "-n", "2", *python, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    return done, time.perf_counter() - start


@pytest.fixture(scope="module")
def equality_results():
    done, _ = launch(CHECKS, "equality")
    results = {}
    for line in done.stdout.splitlines():
        if line.startswith("CASE "):
            name, verdict = line[5:].split(" ", 1)
            results[name] = verdict
    assert results, f"no results (rc {done.returncode}):\n{done.stdout}\n{done.stderr}"
    return results


@pytest.mark.parametrize("case", [
    "dense_sgd_momentum_f64", "dense_sgd_momentum_f32", "dense_adam_f64", "dense_adam_f32",
    "dense_adam_layer_path_f64", "dense_adam_layer_path_f32",
    "uneven_shards_partial_batch_clip_f64", "one_rank_empty_in_many_batches_f64",
    "sample_weights_f64", "sample_weights_shard_f32", "validation_early_stopping_f64",
    "mse_uneven_f64", "batchnorm_residual_f64", "batchnorm_residual_f32",
    "batchnorm_one_rank_empty_in_many_batches_f64", "batchnorm_residual_world_size_1_f32",
    "dropout_f64", "dropout_f32", "dropout_layer_path_f64", "dropout_world_size_1_f32",
    "standardize_global_adapt_f64", "api_and_threads"])
def test_two_ranks_equal_single_process(equality_results, case):
    """Parameters after 3 epochs equal single-process training (float64 to 1e-12, float32 to
    rtol 1e-4 / atol 1e-5, against both the layer path and the fused trainer), and are
    bit-identical on both ranks: on the fused trainer and on the layer path, Dropout included
    (each row draws the mask of its place in the global minibatch), BatchNorm included
    (statistics of the global minibatch, also when a rank has no rows in it)."""
    assert equality_results.get(case) == "ok", equality_results.get(case, "not run")


@pytest.mark.parametrize("mode, message", [
    ("refuse-width", "rank 1: ValueError: X has 5 columns but the model takes 8 inputs"),
    ("refuse-dtype", "rank 1 differs from rank 0 in X (width, dtype)"),
    ("refuse-labels", "rank 1: ValueError: y holds class label"),
    ("refuse-nan", "rank 1: ValueError: X contains 1 NaN"),
    ("refuse-batch-size", "rank 1 differs from rank 0 in batch_size: '17' vs '16'"),
])
def test_mismatch_refused_on_every_rank_before_any_step(mode, message):
    done, _ = launch(CHECKS, mode, timeout=60)
    assert done.returncode == 0, done.stderr
    for rank in (0, 1):                  # the ranks' lines may interleave: count, not parse
        assert done.stdout.count(f"RANK {rank} REFUSED") == 1, done.stdout
        assert f"RANK {rank} TRAINED" not in done.stdout
    assert done.stdout.count(message) == 2, done.stdout
    if mode != "refuse-batch-size":
        assert done.stdout.count("steps 0") == 2, done.stdout


@pytest.mark.parametrize("module", [True, False], ids=["python -m mpi4py", "plain python"])
def test_rank_raising_mid_epoch_ends_the_job(module):
    """One rank raises in epoch 2 while the other waits in the Allreduce: the job ends
    promptly (mpi4py's runner, or fastnn's excepthook: comm.Abort), non-zero, error shown."""
    done, seconds = launch(CHECKS, "raise-mid-epoch", module=module, timeout=60)
    assert done.returncode != 0
    assert "rank 1 fails in epoch 2 on purpose" in done.stderr
    assert "FINISHED" not in done.stdout
    assert seconds < 30


def test_cli_trains_digits_data_parallel_rank_0_prints():
    done, _ = launch("-m", "fastnn", "train", "--distributed", "--epochs", "3", "--verbose",
                     "0", module=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("test accuracy") == 1, done.stdout
    assert "2 ranks" in done.stdout
    accuracy = float(done.stdout.split("test accuracy ")[1].split()[0])
    assert accuracy > 0.85
