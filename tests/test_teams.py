"""The choice of how many threads run a split minibatch (kernels/_teams.py), and that the
choice never changes what the cython and numba_cpu trainers compute."""
import os

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastnn
from fastnn.backends import available_backends
from fastnn.kernels import _teams
from fastnn.kernels._teams import PROBE_STEPS, WARMUP_SECONDS, TeamChoice


class FakeClock:
    """perf_counter for TeamChoice: advanced by the 'training' of each segment."""

    def __init__(self, monkeypatch):
        self.now = 100.0
        monkeypatch.setattr(_teams.time, "perf_counter", lambda: self.now)


def train(choice, clock, n_batches, threads, seconds_per_step):
    """Run choice's segments, each costing seconds_per_step[team] per minibatch; return them."""
    done = []
    for first, count, team in choice.segments(n_batches, threads):
        clock.now += count * seconds_per_step[team]
        done.append((first, count, team))
    return done


@pytest.mark.parametrize("n_batches", [1, 7, 8, 9, 40, 200])
def test_segments_cover_every_minibatch_once_in_order(monkeypatch, n_batches):
    clock, choice = FakeClock(monkeypatch), TeamChoice()
    for _ in range(3):
        done = train(choice, clock, n_batches, 2, {1: 2e-4, 2: 1e-4})
        starts = [first for first, _, _ in done]
        assert starts == list(np.cumsum([0] + [c for _, c, _ in done])[:-1])
        assert sum(count for _, count, _ in done) == n_batches


@pytest.mark.parametrize("faster", [1, 2])
def test_the_faster_team_trains_the_rest(monkeypatch, faster):
    clock, choice = FakeClock(monkeypatch), TeamChoice()
    cost = {faster: 1e-4, 3 - faster: 3e-4}
    done = train(choice, clock, 400, 2, cost)
    # two threads warm up (untimed) for WARMUP_SECONDS, are measured, then one thread is,
    # then the faster team runs the rest
    teams = [team for _, _, team in done]
    one = teams.index(1)
    assert set(teams[:one]) == {2} and one >= 2
    warm_up = sum(count for _, count, _ in done[:one - 1])
    assert warm_up * cost[2] >= WARMUP_SECONDS > (warm_up - PROBE_STEPS) * cost[2]
    assert [count for _, count, _ in done[one - 1:one + 1]] == [PROBE_STEPS, PROBE_STEPS]
    probed = warm_up + 2 * PROBE_STEPS
    assert done[one + 1:] == [(probed, 400 - probed, faster)]
    assert choice.rate == pytest.approx(cost)
    assert choice.best(2) == faster
    # the next call, soon after: no probe, all on the faster team
    assert train(choice, clock, 50, 2, cost) == [(0, 50, faster)]


def test_the_other_team_is_measured_again_when_load_changes(monkeypatch):
    clock, choice = FakeClock(monkeypatch), TeamChoice()
    train(choice, clock, 100, 2, {1: 3e-4, 2: 1e-4})
    assert choice.best(2) == 2
    clock.now += 1.0                         # later, another process takes a core
    loaded = {1: 3e-4, 2: 9e-4}
    done = train(choice, clock, 100, 2, loaded)
    teams = [team for _, _, team in done]
    # two threads are probed twice (a slow measurement is confirmed first), one thread
    # once, and one thread runs the rest
    counts = [count for _, count, _ in done]
    assert teams[-4:] == [2, 2, 1, 1] and counts[-4:-1] == [PROBE_STEPS] * 3
    assert choice.best(2) == 1


def test_one_slow_measurement_does_not_switch_the_team(monkeypatch):
    """A single probe that finds the faster team slow (a VM's hiccup) is not believed: the
    rest of the epoch stays on it, and its next measurement, normal again, keeps it."""
    clock, choice = FakeClock(monkeypatch), TeamChoice()
    quiet = {1: 2e-4, 2: 1e-4}
    train(choice, clock, 100, 2, quiet)
    clock.now += 1.0                                       # both teams are due again
    hiccup = {"left": PROBE_STEPS}

    def hiccup_once(n_batches):
        done = []
        for _, count, team in choice.segments(n_batches, 2):
            slow = (team == 2 and hiccup["left"] > 0
                    and choice._warm(2, clock.now) >= WARMUP_SECONDS)   # a timed probe
            hiccup["left"] -= count if slow else 0
            clock.now += count * quiet[team] * (4 if slow else 1)
            done.append(team)
        return done

    teams = hiccup_once(100)
    assert hiccup["left"] <= 0 and teams[-3:] == [2, 1, 2]     # measured again, then one
    assert choice.best(2) == 2 and choice.rate[2] == pytest.approx(1e-4)


def test_two_threads_are_measured_warm(monkeypatch):
    """Two threads run 3× slower for their first WARMUP_SECONDS after idling: that part is
    not timed, so their probes still find them faster than one thread."""
    clock, choice = FakeClock(monkeypatch), TeamChoice()
    state = {"cold": WARMUP_SECONDS}                       # seconds left of slow running

    def train_cold(n_batches):
        for _, count, team in choice.segments(n_batches, 2):
            if team == 2:
                for _ in range(count):
                    step = 3e-4 if state["cold"] > 0 else 1e-4
                    state["cold"] -= step
                    clock.now += step
            else:
                state["cold"] = WARMUP_SECONDS             # the second thread idles
                clock.now += count * 2e-4

    for _ in range(400):                                   # short epochs, as for digits
        train_cold(7)
        clock.now += 1e-4
    assert choice.best(2) == 2
    assert choice.rate[2] == pytest.approx(1e-4)


def test_a_warm_up_interrupted_for_long_is_run_again(monkeypatch):
    clock, choice = FakeClock(monkeypatch), TeamChoice()
    train(choice, clock, 20, 2, {1: 2e-4, 2: 1e-4})         # 2 ms: warming up, untimed
    assert choice.rate == {}
    clock.now += 1.0
    done = train(choice, clock, 100, 2, {1: 2e-4, 2: 1e-4})
    warm_up = sum(count for _, count, team in done[:-3])
    assert warm_up * 1e-4 >= WARMUP_SECONDS                  # all of it again


def train_for(choice, clock, seconds, cost, n_batches=50):
    """Epochs of n_batches until ``seconds`` have passed; (start time, count, team) of
    every segment."""
    done, end = [], clock.now + seconds
    while clock.now < end:
        for _, count, team in choice.segments(n_batches, 2):
            done.append((clock.now, count, team))
            clock.now += count * cost[team]
        clock.now += 1e-4                                  # fit's Python between epochs
    return done


def test_a_team_that_keeps_losing_is_probed_ever_less_often(monkeypatch):
    """Under load two threads lose every probe: the time between their probes doubles each
    time, up to 2**REPROBE_BACKOFF_MAX times the first, so that their warm-ups and probes
    cost a small fraction of the time."""
    clock, choice = FakeClock(monkeypatch), TeamChoice()
    loaded = {1: 1e-4, 2: 3e-4}
    done = train_for(choice, clock, 60.0, loaded)
    starts = [t for i, (t, _, team) in enumerate(done)     # each run of team-2 segments
              if team == 2 and (i == 0 or done[i - 1][2] != 2)]
    gaps = np.diff(starts)
    first = max(_teams.REPROBE_SECONDS, _teams.REPROBE_FACTOR * (
        PROBE_STEPS * loaded[2] + WARMUP_SECONDS))
    cap = first * 2 ** _teams.REPROBE_BACKOFF_MAX
    assert gaps[0] == pytest.approx(first, rel=0.1)       # (its first probe had no rival)
    assert all(b == pytest.approx(min(2 * a, cap), rel=0.1) for a, b in zip(gaps, gaps[1:]))
    late = [(count, team) for t, count, team in done if t > starts[0] + 30.0]
    on_two = sum(count * loaded[2] for count, team in late if team == 2)
    assert on_two < 0.005 * sum(count * loaded[team] for count, team in late)


def test_a_narrow_loss_keeps_the_plain_interval(monkeypatch):
    clock, choice = FakeClock(monkeypatch), TeamChoice()
    close = {1: 1e-4, 2: 1.2e-4}                          # two threads a little slower
    done = train_for(choice, clock, 10.0, close)
    starts = [t for i, (t, _, team) in enumerate(done)
              if team == 2 and (i == 0 or done[i - 1][2] != 2)]
    first = max(_teams.REPROBE_SECONDS, _teams.REPROBE_FACTOR * (
        PROBE_STEPS * close[2] + WARMUP_SECONDS))
    assert np.diff(starts) == pytest.approx(first, rel=0.1)
    assert choice.lost[2] == 0 and choice.best(2) == 1


def test_two_threads_come_back_once_the_load_is_gone(monkeypatch):
    clock, choice = FakeClock(monkeypatch), TeamChoice()
    loaded = {1: 1e-4, 2: 3e-4}
    train_for(choice, clock, 60.0, loaded)
    assert choice.best(2) == 1
    quiet = {1: 1e-4, 2: 0.5e-4}
    done = train_for(choice, clock, 10.0, quiet)
    back = next(t for t, _, team in done if team == 2) - done[0][0]
    cap = _teams.REPROBE_FACTOR * (PROBE_STEPS * loaded[2] + WARMUP_SECONDS) \
        * 2 ** _teams.REPROBE_BACKOFF_MAX
    assert back <= cap
    assert choice.best(2) == 2 and choice.lost.get(2) == 0
    assert done[-1][2] == 2


def test_one_thread_is_never_probed_for_more(monkeypatch):
    clock, choice = FakeClock(monkeypatch), TeamChoice()
    assert train(choice, clock, 30, 1, {1: 1e-4}) == [(0, 30, 1)]


def _skip_without_teams(backend):
    """Skip where ``backend`` runs every minibatch on one thread."""
    if backend == "cython":
        from fastnn.kernels.cython import _kernels
        if not _kernels.OPENMP:
            pytest.skip("the cython extension was built without OpenMP: one band only")
    else:
        if not available_backends()[backend].usable:
            pytest.skip(f"{backend} is not usable here")
        from fastnn.kernels.numba_cpu import _team
        if not _team.AVAILABLE:
            pytest.skip("numba_cpu's team barrier needs Linux")


def _train_split_network(backend, loss, clip_norm=None):
    """A 64-128-128-10 network trained 2 epochs in minibatches of 64 (two bands each on 2
    threads); its parameters."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((640, 64), np.float32)
    y = rng.integers(0, 10, 640) if loss == "cross_entropy" else rng.standard_normal((640, 10))
    with threadpool_limits(2, user_api="openmp"):
        model = fastnn.Sequential([fastnn.Dense(64, 128, "relu"),
                                   fastnn.Dense(128, 128, "relu"), fastnn.Dense(128, 10)],
                                  backend=backend, seed=3)
        model.fit(X, y, loss=loss, optimizer=fastnn.Adam(0.01), epochs=2, batch_size=64,
                  clip_norm=clip_norm, verbose=0)
    return model.parameters().copy()


@pytest.mark.parametrize("backend", ["cython", "numba_cpu"])
@pytest.mark.parametrize("loss, clip_norm", [("mse", None), ("cross_entropy", 0.5)])
def test_training_is_the_same_on_one_or_two_threads_of_bands(monkeypatch, backend, loss,
                                                              clip_norm):
    _skip_without_teams(backend)
    runs = []
    for team in (1, 2, None):                 # forced to 1, to 2, and as chosen
        if team is not None:
            monkeypatch.setattr(TeamChoice, "segments",
                                lambda self, n, threads, team=team: iter([(0, n, team)]))
        else:
            monkeypatch.undo()
        runs.append(_train_split_network(backend, loss, clip_norm))
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], runs[2])


class _LatePool:
    """A stand-in for numba_cpu's helper threads that runs each member only when its result is
    asked for, i.e. after member 0 has returned."""

    class _Late:
        def __init__(self, kernel, args):
            self.kernel, self.args = kernel, args

        def result(self):
            return self.kernel(*self.args)

    def submit(self, kernel, *args):
        return self._Late(kernel, args)


def test_a_numba_team_whose_members_never_meet_trains_on_one_of_them(monkeypatch):
    """The second member of a team starts only after the first has returned: the first waits
    for it in vain, then trains everything alone, and the second, late, does nothing (each
    epoch waits _team.JOIN_TICKS, ~0.1 s); the result is the team's."""
    _skip_without_teams("numba_cpu")
    from fastnn.kernels.numba_cpu import _team
    expected = _train_split_network("numba_cpu", "mse")
    monkeypatch.setattr(TeamChoice, "segments", lambda self, n, threads: iter([(0, n, 2)]))
    monkeypatch.setattr(_team, "_pool", lambda workers: _LatePool())
    np.testing.assert_array_equal(_train_split_network("numba_cpu", "mse"), expected)


def _fit_in_child(queue):
    queue.put(_train_split_network("numba_cpu", "mse"))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_numba_team_trains_in_a_process_forked_after_one_ran(monkeypatch):
    """The parent's helper threads do not survive a fork: the child's team makes its own
    (an executor that believed in the parent's would hang the child's first fit)."""
    _skip_without_teams("numba_cpu")
    import multiprocessing
    monkeypatch.setattr(TeamChoice, "segments", lambda self, n, threads: iter([(0, n, 2)]))
    expected = _train_split_network("numba_cpu", "mse")     # helper threads now exist here
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_fit_in_child, args=(queue,))
    child.start()
    try:
        np.testing.assert_array_equal(queue.get(timeout=120), expected)
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()


def test_trainers_of_one_network_shape_share_their_measurements():
    from fastnn.kernels._teams import shared_choice
    from fastnn.kernels.cython import _kernels

    def trainer(width, batch):
        model = fastnn.Sequential([fastnn.Dense(16, width, "relu"), fastnn.Dense(width, 1)],
                                  backend="cython", seed=0)
        return model._make_trainer(fastnn.losses.get("mse"), fastnn.SGD(0.01), batch)

    first, again, other = trainer(32, 64), trainer(32, 64), trainer(48, 64)
    assert isinstance(first, _kernels.Trainer)
    assert first.teams is again.teams            # a second fit starts from the first's rates
    assert first.teams is not other.teams
    assert shared_choice("some", "shape") is shared_choice("some", "shape")
    assert shared_choice("some", "shape") is not shared_choice("another", "shape")


def test_shared_measurements_stay_bounded(monkeypatch):
    from fastnn.kernels._teams import shared_choice
    monkeypatch.setattr(_teams, "_SHARED", {})
    for width in range(_teams.SHARED_MAX + 10):
        shared_choice("bounded", width)
    assert len(_teams._SHARED) <= _teams.SHARED_MAX
