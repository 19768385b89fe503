"""The vanishing-gradient lab's claims (issue 7), measured with fixed seeds on the reference
backend at the lab's defaults (20 hidden layers of width 64, digits)."""
import numpy as np
import pytest

from fastnn import diagnostics, vanishing
from fastnn.cli import main
from fastnn.datasets import load_digits_split
from fastnn.layers import Dense
from fastnn.model import Sequential

SEED = 0


@pytest.fixture(scope="module")
def digits():
    return load_digits_split(seed=SEED)


def norms_at_init(key, digits) -> diagnostics.GradientNorms:
    X_train, _, y_train, _ = digits
    model = Sequential(vanishing.build_layers(vanishing.VARIANTS[key], 64, 10, 20, 64),
                       backend="reference", seed=SEED)
    rows = diagnostics.probe_rows(len(X_train), 32)
    return diagnostics.gradient_norms(model, X_train[rows], y_train[rows], "cross_entropy")


def test_sigmoid_with_xavier_init_loses_the_gradient_geometrically(digits):
    a = norms_at_init("a", digits)
    assert a.first_to_last < 1e-4
    assert a.decay_factor() < 0.5
    assert diagnostics.decay_factor(a.signal_norms) < 0.5
    b = norms_at_init("b", digits)                  # smaller weights: faster still
    assert b.decay_factor() < a.decay_factor()


@pytest.mark.parametrize("key", "cdef")
def test_each_cure_keeps_the_first_layer_gradient_within_100x_of_the_last(key, digits):
    assert 1e-2 <= norms_at_init(key, digits).first_to_last <= 1e2


@pytest.fixture(scope="module")
def trained(digits):
    return {key: vanishing.run_variant(key, seed=SEED, backend="reference", data=digits)
            for key in "acdef"}


def test_after_the_same_sgd_epochs_sigmoid_stays_near_chance_and_the_cures_learn(trained):
    assert trained["a"].test_accuracy[-1] < 0.30
    assert trained["c"].test_accuracy[-1] >= 0.90
    assert trained["f"].test_accuracy[-1] >= 0.90
    assert trained["a"].ratio_trained < 1e-4        # training did not rescue the early layers


@pytest.mark.parametrize("key", "de")
def test_batchnorm_and_skip_connections_let_sigmoid_networks_learn_too(trained, key):
    assert trained[key].test_accuracy[-1] >= 0.90


def test_normal_init_is_small_and_independent_of_the_widths():
    for fan_in, fan_out in ((8, 400), (400, 8)):
        model = Sequential([Dense(fan_in, fan_out, "sigmoid", init="normal")], seed=1)
        assert model.layers[0].weight.std() == pytest.approx(0.01, rel=0.05)


def test_cli_prints_the_table_and_saves_the_figure(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    figure = tmp_path / "lab.png"
    assert main(["vanishing", "--variants", "a", "c", "--depth", "4", "--width", "8",
                 "--epochs", "2", "--backend", "reference", "--plot", str(figure)]) == 0
    out = capsys.readouterr().out
    assert "(a) sigmoid + Xavier" in out and "(c) ReLU + He" in out and "(f)" not in out
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_without_matplotlib_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    assert main(["vanishing", "--variants", "a", "--depth", "2", "--epochs", "1",
                 "--plot", str(tmp_path / "x.png")]) == 2
    assert "pip install 'fastnn[plot]'" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid:RuntimeWarning")
def test_table_marks_a_variant_whose_loss_diverged(digits):
    result = vanishing.run_variant("c", depth=3, width=8, epochs=2, lr=1e6, seed=SEED,
                                   backend="reference", data=digits)
    assert result.diverged
    assert "diverged" in vanishing.format_table({"c": result})
    assert np.isfinite(result.ratio_init)
