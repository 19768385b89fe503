"""How many threads run a minibatch that is split into bands: chosen by measured step time.

A fused trainer may split a minibatch into bands of rows (one gradient buffer each), and the
bands are fixed by the thread count and the work per row, so the result never depends on how
many threads then run them. Running two bands on two threads halves a step's arithmetic but
adds two barriers per step; on a quiet 2-core machine that wins from ~1 M multiply-adds per
minibatch (small network: 133 → 85 µs per step), but when another process holds a core, a
descheduled thread stalls every barrier and the same step runs slower than on one thread
(small: 155-186 vs 121 µs). No fixed threshold is right in both regimes, so :class:`TeamChoice`
measures: it runs a few minibatches with each team size, keeps the faster, and re-measures
the other one now and then, so a change of load is noticed within a fraction of a second.
Trainers of the same network shape share one :class:`TeamChoice` (:func:`shared_choice`), so
that a second ``fit`` (``epochs=1`` in a loop, the benchmark's rounds) starts from what the
first one measured instead of probing both team sizes again.
"""
from __future__ import annotations

import time

#: minibatches a team size is measured on
PROBE_STEPS = 8
#: a team size is measured again once this many seconds have passed since it last was, or
#: REPROBE_FACTOR times its probe's duration if longer (probes then cost at most ~1/25 of the
#: time even when the probed team is twice as slow)
REPROBE_SECONDS = 0.02
REPROBE_FACTOR = 25


class TeamChoice:
    """Cuts an epoch's minibatches into segments, each run by a team of 1 or ``threads``
    threads, and learns which is faster (seconds per minibatch, the latest measurement)."""

    def __init__(self) -> None:
        self.rate: dict[int, float] = {}       # team size -> seconds per minibatch
        self.measured: dict[int, float] = {}   # team size -> when it was last measured

    def best(self, threads: int) -> int:
        """The team size to use now: the faster measured one (``threads`` until measured)."""
        known = {t: r for t, r in self.rate.items() if t in (1, threads)}
        return min(known, key=known.get) if len(known) == 2 else threads

    def segments(self, n_batches: int, threads: int):
        """Yield (first minibatch, count, team) segments covering minibatches 0..n_batches-1;
        the caller trains each before asking for the next, which times it."""
        first = 0
        while first < n_batches:
            team, count = self._next(n_batches - first, threads)
            start = time.perf_counter()
            yield first, count, team
            now = time.perf_counter()
            if team in self.rate:               # a first run (thread start, buffers' first
                self.measured[team] = now       # touch) does not count: measured again
            self.rate[team] = (now - start) / count
            first += count

    def _next(self, left: int, threads: int) -> tuple[int, int]:
        """(team, minibatches) of the next segment: a probe of a team size not measured
        lately (all that is left, if that is less than a probe), else the rest with the best."""
        if threads > 1:
            now = time.perf_counter()
            for team in (threads, 1):
                due = max(REPROBE_SECONDS, REPROBE_FACTOR * PROBE_STEPS * self.rate.get(team, 0))
                if now - self.measured.get(team, -due) >= due:
                    return team, min(PROBE_STEPS, left)
        return self.best(threads), left


#: network shapes whose measurements are kept (a hyper-parameter search makes many; past this
#: many, all are forgotten and measured again)
SHARED_MAX = 256
_SHARED: dict[tuple, TeamChoice] = {}


def shared_choice(*shape) -> TeamChoice:
    """This process's :class:`TeamChoice` for trainers of ``shape`` (whatever identifies the
    work of a minibatch: batch size, work per row, parameters, dtype)."""
    if shape not in _SHARED and len(_SHARED) >= SHARED_MAX:
        _SHARED.clear()
    return _SHARED.setdefault(shape, TeamChoice())
