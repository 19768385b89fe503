"""The cost of Dropout and AdamW in a training step: issue 12's speed table.

For each configuration (tiny, small, mnist by default) and each fused backend, times one
training step (``fit`` over the configuration's minibatches, divided by their number, as
``fastnn bench`` does) of the plain network with SGD, and of the same network with Dropout(0.1)
after every hidden layer trained with AdamW. The two run alternately, round after round, and
the fastest round of each counts, so a busy machine slows both alike; the ratio is the result.

    python bench/regularised_step.py [--configs tiny small mnist] [--rounds 15] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import time

import fastnn
from fastnn.benchmark import CONFIGS, LR, make_data, pin_threads


def build(config, backend: str, dropout: float):
    """The benchmark network of ``config``, with Dropout(dropout) after each hidden layer."""
    layers, last = [], len(config.layer_shapes) - 1
    for k, (i, o) in enumerate(config.layer_shapes):
        layers.append(fastnn.Dense(i, o, "identity" if k == last else config.activation))
        if dropout and k < last:
            layers.append(fastnn.Dropout(dropout))
    return fastnn.Sequential(layers, backend=backend, seed=0, dtype="float32")


def step_seconds(config, backend: str, rounds: int) -> tuple[float, float]:
    """(plain SGD step, Dropout(0.1) + AdamW step), seconds, fastest of alternating rounds."""
    X, y = make_data(config, config.steps)
    runs = [(build(config, backend, 0.0), lambda: fastnn.SGD(LR)),
            (build(config, backend, 0.1), lambda: fastnn.AdamW(LR))]
    optimizers = [make() for _, make in runs]
    best = [float("inf")] * 2
    for r in range(rounds + 1):                          # round 0 warms up (compiles)
        for k, ((model, _), optimizer) in enumerate(zip(runs, optimizers)):
            start = _now()
            model.fit(X, y, loss=config.loss, optimizer=optimizer, epochs=1,
                      batch_size=config.batch, shuffle=False, verbose=0)
            if r:
                best[k] = min(best[k], (_now() - start) / config.steps)
    return best[0], best[1]


def _now() -> float:
    return time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "small", "mnist"],
                        choices=list(CONFIGS))
    parser.add_argument("--backends", nargs="+", default=["numba_cpu", "cython"])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    pin_threads(args.threads)
    print(f"load average before: {os.getloadavg()[0]:.2f}; threads {args.threads}")
    print("| config | backend | plain SGD µs/step | Dropout(0.1) + AdamW µs/step | ratio |")
    print("|---|---|---|---|---|")
    for name in args.configs:
        for backend in args.backends:
            plain, regularised = step_seconds(CONFIGS[name], backend, args.rounds)
            print(f"| {name} | {backend} | {1e6 * plain:.1f} | {1e6 * regularised:.1f} | "
                  f"{regularised / plain:.2f} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
