"""Scaling of data-parallel fit over MPI: 1 vs 2 ranks on the mnist and wide configs.

    python bench/mpi_scaling.py [--configs mnist wide] [--epochs 3] [--json FILE]

Launches each measurement as ``mpiexec -n P python -m mpi4py bench/mpi_scaling.py --worker
...`` (mpiexec next to sys.executable) and prints a Markdown table:

* step time of single-process fit, fused trainer and layer-by-layer path, and of
  ``fit(distributed="mpi")`` on 1 rank, with each rank's share of a step computed by the
  fused trainer (``trainer.gradients``, the default) and layer by layer (``fuse=False``):
  the choice, measured, and what the distributed step costs over plain fit;
* weak scaling: 1 rank × 1 thread at batch B against 2 ranks × 1 thread at global batch 2B
  (the same rows per rank); efficiency = t(1 rank) / t(2 ranks), 1.0 is perfect;
* the Allreduce share of a distributed step (seconds in ``comm.Allreduce`` / step time);
* the same work (global batch 2B) as 2 ranks × 1 thread against 1 rank × 2 threads.

Synthetic data; step time = median epoch time (first epoch dropped) / minibatches per epoch.
Not a test: the figures depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MPIEXEC = Path(sys.executable).with_name("mpiexec")


def worker(args) -> None:
    """One measurement on this MPI job's ranks; rank 0 prints one JSON line."""
    import numpy as np

    import fastnn
    from fastnn.benchmark import CONFIGS

    fastnn.set_num_threads(args.threads)
    config = CONFIGS[args.config]
    size, rank = fastnn.distributed.world_size(), fastnn.distributed.rank()
    steps = config.steps
    batch = args.batch                                     # global minibatch
    rng = np.random.default_rng(rank)
    n_local = steps * batch // size
    X = rng.normal(size=(n_local, config.widths[0])).astype(np.float32)
    if config.loss == "cross_entropy":
        y = rng.integers(0, config.widths[-1], n_local)
    else:
        y = rng.normal(size=(n_local, config.widths[-1])).astype(np.float32)
    layers = [fastnn.Dense(i, o, config.activation) for i, o in config.layer_shapes[:-1]]
    layers.append(fastnn.Dense(*config.layer_shapes[-1]))
    model = fastnn.Sequential(layers, backend=args.backend, seed=0)
    model.fuse = args.mode in ("fused", "distributed")
    extra = {"distributed": "mpi"} if args.mode.startswith("distributed") else {}
    history = model.fit(X, y, config.loss, fastnn.SGD(1e-3, momentum=0.9), epochs=args.epochs,
                        batch_size=batch, verbose=0, **extra)
    times = history["epoch_time"][1:] or history["epoch_time"]
    step = float(np.median(times)) / steps
    allreduce = (float(np.median(history["allreduce_time"][1:] or history["allreduce_time"]))
                 / steps if "allreduce_time" in history.history else 0.0)
    if rank == 0:
        print(json.dumps({"config": args.config, "mode": args.mode, "ranks": size,
                          "threads": args.threads, "batch": batch, "step_s": step,
                          "allreduce_s": allreduce, "backend": model.backend}), flush=True)


def measure(config: str, mode: str, ranks: int, threads: int, batch: int, epochs: int,
            backend: str) -> dict:
    command = [str(MPIEXEC), "-n", str(ranks), sys.executable, "-m", "mpi4py", __file__,
               "--worker", "--config", config, "--mode", mode, "--threads", str(threads),
               "--batch", str(batch), "--epochs", str(epochs), "--backend", backend]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(lines[-1])


def table(config: str, epochs: int, backend: str) -> tuple[list[str], list[dict]]:
    from fastnn.benchmark import CONFIGS

    B = CONFIGS[config].batch
    def run(mode, ranks, threads, batch):
        return measure(config, mode, ranks, threads, batch, epochs, backend)

    fused, layer = run("fused", 1, 2, B), run("layer", 1, 2, B)
    dist1, dist1_layer = run("distributed", 1, 2, B), run("distributed-layer", 1, 2, B)
    base = run("distributed", 1, 1, B)
    two = run("distributed", 2, 1, 2 * B)
    same_work = run("distributed", 1, 2, 2 * B)
    fused_2b = run("fused", 1, 2, 2 * B)
    def ms(r):
        return f"{1e3 * r['step_s']:.2f}"

    def share(r):
        return f"{100 * r['allreduce_s'] / r['step_s']:.1f}%"

    rows = [
        f"| {config} | single process, fused trainer, 2 threads | {B} | {ms(fused)} | – |",
        f"| {config} | single process, layer by layer, 2 threads | {B} | {ms(layer)} | – |",
        f"| {config} | distributed, 1 rank × 2 threads | {B} | {ms(dist1)} | {share(dist1)} |",
        f"| {config} | distributed, 1 rank × 2 threads, layer by layer | {B} | "
        f"{ms(dist1_layer)} | {share(dist1_layer)} |",
        f"| {config} | distributed, 1 rank × 1 thread | {B} | {ms(base)} | {share(base)} |",
        f"| {config} | distributed, 2 ranks × 1 thread | {2 * B} | {ms(two)} | {share(two)} |",
        f"| {config} | distributed, 1 rank × 2 threads | {2 * B} | {ms(same_work)} | "
        f"{share(same_work)} |",
        f"| {config} | single process, fused trainer, 2 threads | {2 * B} | {ms(fused_2b)} | – |",
        f"| {config} | **weak-scaling efficiency** t(1×1, B) / t(2×1, 2B) | | "
        f"**{base['step_s'] / two['step_s']:.2f}** | |",
        f"| {config} | **2 ranks × 1 thread vs 1 rank × 2 threads** (same work, speed-up) | | "
        f"**{same_work['step_s'] / two['step_s']:.2f}×** | |",
        f"| {config} | **distributed 1 rank: layer path / fused shares** (the choice) | | "
        f"**{dist1_layer['step_s'] / dist1['step_s']:.2f}×** | |",
        f"| {config} | **distributed 1 rank / single-process fused** (cost of the distributed "
        f"step) | | **{dist1['step_s'] / fused['step_s']:.2f}×** | |",
    ]
    return rows, [fused, layer, dist1, dist1_layer, base, two, same_work, fused_2b]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", default="mnist")
    parser.add_argument("--mode", choices=["fused", "layer", "distributed",
                                           "distributed-layer"],
                        default="distributed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--configs", nargs="+", default=["mnist", "wide"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--backend", default="cython")
    parser.add_argument("--json", help="also write the raw measurements here")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    print(f"load average before: {os.getloadavg()}", flush=True)
    print("| config | run | global batch | step ms | Allreduce share |")
    print("|---|---|---|---|---|")
    raw = []
    for config in args.configs:
        rows, results = table(config, args.epochs, args.backend)
        print("\n".join(rows), flush=True)
        raw += results
    print(f"load average after: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
