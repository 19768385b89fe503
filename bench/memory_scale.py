"""Memory of fit, predict and evaluate over a big X (issue 14): what each call adds to X.

    python bench/memory_scale.py [--rows 400000] [--features 128] [--backends numba_cpu cython]
                                 [--json FILE]

Each measurement runs in a fresh ``python bench/memory_scale.py --worker ...`` process, which
compiles on a small array first, then makes a C-contiguous float32 X (rows × features) and
int64 labels, then makes the one call and reports the peak it added:

* tracemalloc: the peak of traced allocations above the level when the call started (NumPy's
  buffers are traced; memory that Numba's runtime or Cython's kernels allocate is not);
* RSS: ``resource.getrusage`` ru_maxrss after the call minus its value once X and y exist
  (X is the process's last growth then, so that value is the current RSS).

predict's result (rows × outputs) is subtracted from both. The calls: fit (1 epoch, batch
256), fit with ``validation_split=0.1`` and ``standardize=True``, predict, evaluate (batch
1024); the network is Dense(features, 64, relu), Dense(64, 10, softmax), cross-entropy.
Not a test: ru_maxrss has page granularity and the allocator may keep freed memory.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CALLS = ("fit", "fit split+std", "predict", "evaluate")
CLASSES = 10
FIT = {"loss": "cross_entropy", "epochs": 1, "batch_size": 256, "verbose": 0}


def _network(backend: str, features: int, standardize: bool):
    import fastnn

    layers = [fastnn.Standardize(features)] if standardize else []
    layers += [fastnn.Dense(features, 64, "relu"), fastnn.Dense(64, CLASSES, "softmax")]
    return fastnn.Sequential(layers, backend=backend, seed=0)


def _run(call: str, model, X, y):
    """Make the call; return what it returned."""
    if call == "fit":
        return model.fit(X, y, **FIT)
    if call == "fit split+std":
        return model.fit(X, y, validation_split=0.1, standardize=True, **FIT)
    if call == "predict":
        return model.predict(X)
    return model.evaluate(X, y, "cross_entropy")


def worker(args) -> None:
    """One measurement; prints one JSON line."""
    import tracemalloc

    import numpy as np

    standardize = args.call == "fit split+std"
    rng = np.random.default_rng(0)
    small = rng.standard_normal((512, args.features), dtype=np.float32)
    _run(args.call, _network(args.backend, args.features, standardize), small,
         rng.integers(0, CLASSES, len(small)))                   # compile outside the count
    model = _network(args.backend, args.features, standardize)
    X = rng.standard_normal((args.rows, args.features), dtype=np.float32)
    y = rng.integers(0, CLASSES, args.rows)
    if args.measure == "tracemalloc":
        tracemalloc.start()
        start = tracemalloc.get_traced_memory()[0]
        result = _run(args.call, model, X, y)
        grown = tracemalloc.get_traced_memory()[1] - start
        tracemalloc.stop()
    else:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # KiB on Linux
        result = _run(args.call, model, X, y)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start
    grown -= getattr(result, "nbytes", 0)                  # predict's result is not extra
    print(json.dumps({"backend": args.backend, "call": args.call, "measure": args.measure,
                      "grown": int(grown), "X": int(X.nbytes)}), flush=True)


def measure(backend: str, call: str, how: str, rows: int, features: int) -> dict:
    command = [sys.executable, __file__, "--worker", "--backend", backend, "--call", call,
               "--measure", how, "--rows", str(rows), "--features", str(features)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
    if done.returncode or not lines:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(lines[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="numba_cpu", help=argparse.SUPPRESS)
    parser.add_argument("--call", choices=CALLS, default="fit", help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=["tracemalloc", "rss"], default="rss",
                        help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--backends", nargs="+", default=["numba_cpu", "cython"])
    parser.add_argument("--json", help="also write the raw measurements here")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    mib = 4 * args.rows * args.features / 2**20
    print(f"X: {args.rows} × {args.features} float32 = {mib:.1f} MiB; load average before: "
          f"{os.getloadavg()}", flush=True)
    print("| backend | call | tracemalloc peak, MiB | × X | RSS growth, MiB | × X |")
    print("|---|---|---|---|---|---|")
    raw = []
    for backend in args.backends:
        for call in CALLS:
            traced, rss = (measure(backend, call, how, args.rows, args.features)
                           for how in ("tracemalloc", "rss"))
            raw += [traced, rss]
            print(f"| {backend} | {call} | " + " | ".join(
                f"{r['grown'] / 2**20:.1f} | {r['grown'] / r['X']:.3f}" for r in (traced, rss))
                + " |", flush=True)
    print(f"load average after: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
