"""How many threads run a minibatch that is split into bands: chosen by measured step time.

A fused trainer may split a minibatch into bands of rows (one gradient buffer each), and the
bands are fixed by the thread count and the work per row, so the result never depends on how
many threads then run them. Running two bands on two threads halves a step's arithmetic but
adds two barriers per step; on a quiet 2-core machine that wins from ~1 M multiply-adds per
minibatch (small network: 133 → 85 µs per step), but when another process holds a core, a
descheduled thread stalls every barrier and the same step runs slower than on one thread
(small: 155-186 vs 121 µs). No fixed threshold is right in both regimes, so :class:`TeamChoice`
measures: it runs a few minibatches with each team size, keeps the faster, and re-measures
the other one now and then, so a change of load is noticed within a fraction of a second
(less and less often, down to every few seconds, while it keeps losing by far). A single
measurement is not believed when it finds a team far slower than before: the team is
measured again at once, and its rate is the better of the two. On a 2-vCPU AMD Zen 4 VM, one
probe in tens found two threads 2-4× slower than they were just before and after (digits'
64-100-10 network: 184-213 against 58-61 µs per minibatch), and such a probe alone switched a
fit to one thread (100 µs) for a third of a second: a fit then took 140-157 ms instead of
~100.
A team of several threads is timed only once it has run for a few milliseconds in a row:
after idling, two threads run slowly for a while (on a 2-vCPU AMD VM, a 64-100-10 network's
7-minibatch epochs took 154-304 µs per minibatch in such a probe, against 73-120 µs once
warm), and cold probes kept a fit on one thread (123-210 µs) for good.
Both CPU trainers (cython's OpenMP team, numba_cpu's Numba team) split minibatches by the
same rules, below. Trainers of the same network shape share one :class:`TeamChoice`
(:func:`shared_choice`), so that a second ``fit`` (``epochs=1`` in a loop, the benchmark's
rounds) starts from what the first one measured instead of probing both team sizes again.
"""
from __future__ import annotations

import time

#: a band of a minibatch carries at least this many rows and multiply-adds (forward pass;
#: the whole step is ~3×: ≈ 8 µs of one core), enough to pay for the two barriers per
#: minibatch on a quiet machine; whether a second thread then runs the second band is
#: measured (:class:`TeamChoice`), as under load it no longer pays
MIN_BAND_ROWS = 8
MIN_BAND_WORK = 1 << 18
#: from this much work per minibatch (multiply-adds, forward; mnist's 128 × 784-256-256-10 is
#: 2^25) every band has its own thread, unmeasured: one thread would then be about 2× slower
#: on a quiet machine, all of them only ~1.1× slower under load (measured), and a step is too
#: long for the probes to settle within a short fit
TEAM_CHOICE_MAX_WORK = 1 << 24
#: A network of THREADED_BLAS_PARAMS parameters or more whose largest layer takes
#: THREADED_BLAS_WORK multiply-adds per minibatch (batch × in × out) or more trains each
#: minibatch as one band, its matmuls on BLAS's own threads: bands would each write a copy of
#: all the gradients, and the update would add them up. Measured on a 2-vCPU Sapphire
#: Rapids VM (2026-12-03, cython), µs per step, bands vs threaded BLAS: wide (512 ×
#: 1024-2048-2048-1024: 2^31, 8.4 M parameters) 120 000 vs 102 000; 256 × 1024-1024-1024-10
#: (2^28, 2.1 M) 17 000-17 700 vs 12 700-13 300; but mnist's 784-256-256-10 (0.27 M) at
#: batch 1024 (2^27.6) 6 300-6 900 vs 7 000-7 100, and at its own 128 (2^24.6) faster in bands
THREADED_BLAS_WORK = 1 << 27
THREADED_BLAS_PARAMS = 1 << 20


def threaded_blas(threads: int, params: int, batch: int, max_layer_work: int) -> bool:
    """Whether a network trains its minibatches as one band on BLAS's threads (see
    THREADED_BLAS_WORK)."""
    return (threads > 1 and params >= THREADED_BLAS_PARAMS
            and batch * max_layer_work >= THREADED_BLAS_WORK)


#: minibatches a team size is measured on
PROBE_STEPS = 8
#: a team of several threads is timed only after running this many seconds in a row
#: (measured on a 2-vCPU AMD VM: 5-8 back-to-back 7-minibatch epochs, ~5 ms, took two threads
#: from 175-304 to 115-120 µs per minibatch)
WARMUP_SECONDS = 0.005
#: a team's run counts towards its warm-up if its next segment starts within this many
#: seconds (fit's Python between two epochs takes ~0.1 ms)
WARMUP_EXPIRES = 0.002
#: a team size is measured again once this many seconds have passed since it last was, or
#: REPROBE_FACTOR times its probe's duration (with its warm-up) if longer: probes then cost at
#: most ~1/25 of the time even when the probed team is twice as slow
REPROBE_SECONDS = 0.02
REPROBE_FACTOR = 25
#: ... and that interval doubles with each measurement in a row that found the team more
#: than BACKOFF_MARGIN times slower than the other, up to 2**REPROBE_BACKOFF_MAX times: while
#: another process holds a core, two threads lose every probe by far, and their warm-ups and
#: probes cost a 2-thread small-network fit 3-5% of its time (cython, 2-vCPU Sapphire Rapids
#: VM, one core busy: 2-thread minibatches 169-189 µs against one thread's 70-78, 2-8% of
#: them); once the load is gone, two threads are back within that many times the interval
#: (~3 s for small). A narrow loss (a quiet machine's noise: small's two threads measured
#: 55-58 µs, one 69-79, and a noisy stretch can reverse them) keeps the plain interval.
REPROBE_BACKOFF_MAX = 4
BACKOFF_MARGIN = 1.5


class TeamChoice:
    """Cuts an epoch's minibatches into segments, each run by a team of 1 or ``threads``
    threads, and learns which is faster (seconds per minibatch, the latest measurement).

    A segment of several threads is timed only when that team has just run for
    WARMUP_SECONDS before it (its streak, see :meth:`_warm`); a probe of it is preceded by
    untimed segments of warm-up where needed."""

    def __init__(self) -> None:
        self.rate: dict[int, float] = {}       # team size -> seconds per minibatch: the
        #                                        lower of its last two measurements
        self._last: dict[int, float] = {}      # team size -> its latest measurement
        self.measured: dict[int, float] = {}   # team size -> when it was last measured
        self.lost: dict[int, int] = {}         # team size -> its measurements in a row that
        #                                        found it far slower (BACKOFF_MARGIN)
        self._streak = (1, 0.0, 0.0)           # (team, start, end) of the latest run

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
            warmed = self._warm(team, start)
            yield first, count, team
            now = time.perf_counter()
            if team == 1 or warmed >= WARMUP_SECONDS:
                self._measure(team, (now - start) / count)
                self.measured[team] = now
                self.lost[team] = self.lost.get(team, 0) + 1 \
                    if self._far_slower(team, threads) else 0
            self._streak = (team, start - warmed, now)
            first += count

    def _measure(self, team: int, rate: float) -> None:
        """Record a measurement of ``team``: its rate is now the lower of it and the one
        before (a single slow outlier cannot switch the team; :meth:`_suspect` has it
        measured again at once, which confirms a lasting change of load)."""
        self.rate[team] = min(rate, self._last.get(team, rate))
        self._last[team] = rate

    def _suspect(self, team: int) -> bool:
        """Whether ``team``'s latest measurement found it BACKOFF_MARGIN times slower than
        its rate (the one before): it is measured again before the choice relies on it."""
        return team in self.rate and self._last[team] > BACKOFF_MARGIN * self.rate[team]

    def _far_slower(self, team: int, threads: int) -> bool:
        """Whether ``team`` was last measured BACKOFF_MARGIN times slower than the other."""
        other = self.rate.get(threads if team == 1 else 1)
        return other is not None and self.rate[team] > BACKOFF_MARGIN * other

    def _warm(self, team: int, now: float) -> float:
        """Seconds ``team`` has just run in a row (0 after another team or a pause)."""
        last, began, end = self._streak
        return end - began if last == team and now - end <= WARMUP_EXPIRES else 0.0

    def _next(self, left: int, threads: int) -> tuple[int, int]:
        """(team, minibatches) of the next segment: a team size whose latest measurement is
        suspect or that was not measured lately (the longer ago the more probes in a row it
        lost by far; warmed up first if it has several threads: that may take several calls
        when they are short), else the rest with the best."""
        if threads > 1:
            now = time.perf_counter()
            for team in (threads, 1):
                warmup = WARMUP_SECONDS if team > 1 else 0.0
                due = max(REPROBE_SECONDS, REPROBE_FACTOR * (
                    PROBE_STEPS * self.rate.get(team, 0) + warmup))
                due *= 2 ** min(self.lost.get(team, 0), REPROBE_BACKOFF_MAX)
                if self._suspect(team) or now - self.measured.get(team, -due) >= due:
                    return team, min(PROBE_STEPS, left)    # warm-up or probe: see segments
        return self.best(threads), left


def runs(choice: TeamChoice, n_batches: int, bands: int, update: bool, work: int):
    """(first minibatch, count, team) runs of an epoch whose full minibatches have ``bands``
    bands and ``work`` multiply-adds: measured by ``choice`` while training; its best team
    (unmeasured from TEAM_CHOICE_MAX_WORK, or when only computing gradients); one thread
    for a single band."""
    if bands > 1 and update and work < TEAM_CHOICE_MAX_WORK:
        return choice.segments(n_batches, bands)
    return [(0, n_batches, choice.best(bands) if bands > 1 else 1)]


#: network shapes whose measurements are kept (a hyper-parameter search makes many; past this
#: many, all are forgotten and measured again)
SHARED_MAX = 256
_SHARED: dict[tuple, TeamChoice] = {}


def shared_choice(*shape) -> TeamChoice:
    """This process's :class:`TeamChoice` for trainers of ``shape`` (whatever identifies the
    trainer and the work of a minibatch: backend, batch size, work per row, parameters,
    dtype)."""
    if shape not in _SHARED and len(_SHARED) >= SHARED_MAX:
        _SHARED.clear()
    return _SHARED.setdefault(shape, TeamChoice())
