"""pytest setup of the benchmark suite: when to time, threads, rounds, dtype, and the results
table.

Timing happens only when asked for: ``pytest bench/`` (the command line names ``bench/`` or a
file in it) or ``--benchmark-enable``. Everywhere else, the default ``pytest`` run included,
each benchmark executes once on one minibatch without timing, so the suite cannot rot and costs
seconds. ``--benchmark-disable`` turns timing off even for ``pytest bench/``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from fastnn import benchmark as bm

BENCH_DIR = Path(__file__).parent.resolve()
TIMED = pytest.StashKey[bool]()
RESULTS = pytest.StashKey[bm.Results]()


def pytest_addoption(parser):
    group = parser.getgroup("fastnn bench")
    group.addoption("--bench-threads", type=int, default=None,
                    help="threads for every contender (default: all cores of this process)")
    group.addoption("--bench-rounds", type=int, default=10,
                    help="timed rounds per benchmark; the fastest is reported (default: 10)")
    group.addoption("--bench-dtype", choices=bm.DTYPES, default="float32",
                    help="what every contender, the data and the matmul peak compute in "
                         "(default: float32)")


def _names_bench(config: pytest.Config) -> bool:
    """True when the command line itself names bench/ or something inside it."""
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        return False
    paths = (Path(config.invocation_params.dir, arg.split("::")[0]).resolve()
             for arg in config.args)
    return any(p == BENCH_DIR or BENCH_DIR in p.parents for p in paths)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    enable = config.getoption("benchmark_enable", default=False)
    disable = config.getoption("benchmark_disable", default=False)
    timed = enable or (_names_bench(config) and not disable)
    config.stash[TIMED] = timed
    # tell pytest-benchmark the same, so it prints no empty tables (runs before its own
    # pytest_configure, which is trylast, whenever this conftest loads at startup)
    config.option.benchmark_disable = not timed


def pytest_report_header(config: pytest.Config) -> str:
    return f"fastnn bench: dtype {config.getoption('bench_dtype', default='float32')}"


@dataclass
class BenchRun:
    """The session's timing policy and results, handed to every benchmark."""

    timed: bool
    rounds: int
    results: bm.Results

    @property
    def dtype(self) -> str:
        return self.results.dtype

    def steps(self, config: bm.Config) -> int:
        """Minibatches per call: the config's count when timing, else one."""
        return config.steps if self.timed else 1

    def time(self, benchmark, fn, group: str) -> float | None:
        """Fastest of ``rounds`` calls after a warm-up (seconds); untimed: one call, None."""
        benchmark.group = group
        if not self.timed:
            benchmark.pedantic(fn, rounds=1, iterations=1)    # disabled: just calls fn once
            return None
        bm.settle()
        benchmark.pedantic(fn, rounds=self.rounds, warmup_rounds=1, iterations=1)
        return benchmark.stats.stats.min

    def record(self, benchmark, config: bm.Config, task: str, contender: str,
               seconds: float) -> None:
        row = self.results.add(config, task, contender, seconds)
        benchmark.extra_info.update(row.extra_info(), dtype=self.dtype)


@pytest.fixture(scope="session")
def bench_dtype(pytestconfig) -> str:
    """``--bench-dtype``: what every contender computes in."""
    return pytestconfig.getoption("bench_dtype", default="float32")


@pytest.fixture(scope="session")
def bench_run(pytestconfig, bench_dtype):
    timed = pytestconfig.stash.get(TIMED, False)
    threads = pytestconfig.getoption("bench_threads", default=None) or bm.default_threads()
    contenders = bm.usable_contenders()
    devices = {bm.device_of(c) for c in contenders}
    bm.pin_threads(threads, torch=any(c in bm.TORCH_PEERS for c in contenders))
    peaks = bm.measure_peaks(threads, devices, quick=not timed, dtype=bench_dtype)
    results = pytestconfig.stash[RESULTS] = bm.Results(threads, peaks, bm.thread_state(),
                                                       dtype=bench_dtype)
    yield BenchRun(timed, pytestconfig.getoption("bench_rounds", default=10), results)
    if timed:
        results.update_peaks(bm.measure_peaks(threads, devices, dtype=bench_dtype))


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    results = config.stash.get(RESULTS, None)
    if results is None or not results.rows:
        return
    terminalreporter.write_sep("=", "fastnn benchmark (fastest round per step)")
    machine = bm.machine()
    terminalreporter.write_line(", ".join(f"{k} {v}" for k, v in machine.items()))
    terminalreporter.write_line(results.table())
