"""scikit-learn's MLPClassifier/MLPRegressor and fastnn.sklearn's side by side: fit wall time
and test score on the cases of fastnn/_sklearn_bench.py (``fastnn bench --sklearn`` prints
the same table).

Timed (``pytest bench/``): each case at full size, every fit in its own process, and the
table printed at the end. Untimed (the default ``pytest`` run): each case on a few hundred
rows for 3 epochs in this process, so the code cannot rot. No test asserts a speed; the
table marks the issue's targets (10× faster, within 1 point) ok or MISS.
"""
import numpy as np
import pytest

from fastnn import _sklearn_bench as sb


@pytest.fixture(scope="module")
def side_by_side(request, bench_run):
    """Collects the timed rows; prints their table when the module is done."""
    rows: list[sb.Row] = []
    yield rows
    if rows:
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        reporter.write_sep("=", "scikit-learn vs fastnn.sklearn (fit wall time, test score)")
        reporter.write_line(sb.table(rows, bench_run.results.threads))


def test_both_estimators_get_the_same_hyper_parameters():
    for case in sb.CASES.values():
        ours, theirs = sb.estimator("fastnn", case), sb.estimator("sklearn", case)
        shared = set(ours.get_params()) & set(theirs.get_params())
        assert {k: ours.get_params()[k] for k in shared} == \
            {k: theirs.get_params()[k] for k in shared}


@pytest.mark.parametrize("name", list(sb.CASES))
def test_side_by_side(bench_run, side_by_side, name):
    case = sb.CASES[name]
    if not bench_run.timed:
        for which in sb.ESTIMATORS:
            result = sb.run_one(case, which, n_samples=400, max_iter=3)
            assert result["n_iter"] == 3 and np.isfinite(result["score"])
        return
    row = sb.run([name], bench_run.results.threads)[0]
    assert np.isfinite([row.sklearn["score"], row.fastnn["score"]]).all()
    side_by_side.append(row)


def test_isolated_runs_and_their_table(bench_run):
    """The path of ``fastnn bench --sklearn``: each fit in its own process, short ones in
    several, the median counting; then the table (small: 300 rows, 2 epochs, 1 thread so no
    1-thread rerun, 2 processes per short fit, to keep the default run quick)."""
    if bench_run.timed:
        return                       # the timed run goes through it at full size above
    rows = sb.run(["digits"], threads=1, n_samples=300, max_iter=2, runs=2)
    assert rows[0].sklearn_1 is None and rows[0].fastnn_1 is None
    assert rows[0].fastnn["n_iter"] == 2 and rows[0].speedup_best == rows[0].speedup
    for result in (rows[0].sklearn, rows[0].fastnn):
        fastest, slowest = result["spread"]
        assert result["runs"] == 2 and result["seconds"] == fastest <= slowest
    text = sb.table(rows, 1)
    assert text.count("\n| digits | 64-100-10 |") == 1 and "targets" in text
