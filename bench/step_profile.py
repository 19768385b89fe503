"""Where a fused numba_cpu training step spends its time: its matmuls against the rest.

    python bench/step_profile.py [--configs tiny small mnist wide deep] [--rounds 5]

Times the whole step (``fastnn.benchmark.run``, numba_cpu, float32, 2 threads), then each of
the step's matmuls alone, at the shapes and BLAS threads the fused trainer uses (``np.dot``
inside Numba, as the trainer calls it; a batch split into row chunks is timed as one chunk
on one thread): forward X·W, dW = Xᵀ·dZ, dX = dZ·Wᵀ (none for the first layer). "Rest" is
the step minus those matmuls: gather, bias and activation epilogues, loss, optimizer update,
parallel-region overhead. Prints a Markdown table. Not a test: the figures depend on the
machine and its load.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from numba import njit

from fastnn import SGD, benchmark, losses
from fastnn.benchmark import CONFIGS
from fastnn.kernels._threads import kernel_blas_threads


@njit
def _forward(X, W, Z, reps):
    for _ in range(reps):
        np.dot(X, W, Z)


@njit
def _weight_grad(X, dZ, G, reps):
    for _ in range(reps):
        np.dot(X.T, dZ, G)


@njit
def _input_grad(dZ, W, dX, reps):
    for _ in range(reps):
        np.dot(dZ, W.T, dX)


def _seconds(kernel, args, multiply_adds: int) -> float:
    """Fastest of 7 timings of one call, after a warm-up."""
    reps = max(3, int(3e7 // max(multiply_adds, 1)))
    kernel(*args, 1)
    best = float("inf")
    for _ in range(7):
        start = time.perf_counter()
        kernel(*args, reps)
        best = min(best, (time.perf_counter() - start) / reps)
    return best


def matmul_times(config_name: str, threads: int) -> tuple[dict[str, float], int]:
    """Seconds per step in each kind of matmul of the config's fused step, and the BLAS
    threads they ran with."""
    config = CONFIGS[config_name]
    model = benchmark.build_model(config, "numba_cpu")
    trainer = model._make_trainer(losses.get(config.loss), SGD(1e-3), config.batch)
    row_threads, blas_threads = trainer.split(threads)
    rows = -(-config.batch // row_threads)               # one chunk's rows
    rng = np.random.default_rng(0)
    total = {"forward": 0.0, "dW": 0.0, "dX": 0.0}
    with kernel_blas_threads(blas_threads):
        for i, (n_in, n_out) in enumerate(config.layer_shapes):
            X = rng.standard_normal((rows, n_in), dtype=np.float32)
            W = rng.standard_normal((n_in, n_out), dtype=np.float32)
            Z = np.empty((rows, n_out), np.float32)
            work = rows * n_in * n_out
            total["forward"] += _seconds(_forward, (X, W, Z), work)
            total["dW"] += _seconds(_weight_grad, (X, Z, np.empty((n_in, n_out), np.float32)),
                                    work)
            if i > 0:
                total["dX"] += _seconds(_input_grad, (Z, W, np.empty_like(X)), work)
    return total, blas_threads


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "small", "mnist", "wide",
                                                          "deep"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    results = benchmark.run(args.configs, ["numba_cpu"], args.threads, args.rounds)
    steps = {r.config: r.us for r in results.rows if r.task == "train"}
    print("| config | step µs | forward matmuls | dW matmuls | dX matmuls | all matmuls | "
          "rest | BLAS threads |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.configs:
        total, blas_threads = matmul_times(name, args.threads)
        step, gemm = steps[name], 1e6 * sum(total.values())
        cells = " | ".join(f"{1e6 * v:,.1f}" for v in total.values())
        print(f"| {name} | {step:,.1f} | {cells} | {gemm:,.1f} ({100 * gemm / step:.0f}%) | "
              f"{step - gemm:,.1f} ({100 * (step - gemm) / step:.0f}%) | {blas_threads} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
