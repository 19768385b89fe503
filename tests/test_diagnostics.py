"""fastnn.diagnostics: the gradient norms are those of the true gradients (finite differences),
every backend reports the same ones, measuring changes nothing, and fit records them."""
import numpy as np
import pytest

import fastnn
from fastnn import diagnostics
from fastnn.layers import BatchNorm, Dense, Residual, from_config
from fastnn.model import Sequential

from conftest import COMPILED_BACKENDS

LOSS = "cross_entropy"


def small_net(backend="reference", dtype="float64", seed=3):
    """Every kind of place a Dense layer can sit: first, after BatchNorm, inside a block, last."""
    return Sequential([Dense(4, 5, "tanh"), BatchNorm(5), Residual([Dense(5, 5, "sigmoid")]),
                       Dense(5, 3)], backend=backend, dtype=dtype, seed=seed)


def batch(n=6, n_in=4, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n_in)), rng.integers(0, n_classes, n)


def finite_difference(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar f() with respect to every entry of x (in place)."""
    grad = np.empty_like(x)
    for i in np.ndindex(x.shape):
        saved = x[i]
        x[i] = saved + h
        up = f()
        x[i] = saved - h
        down = f()
        x[i] = saved
        grad[i] = (up - down) / (2 * h)
    return grad


def test_weight_norms_are_norms_of_finite_difference_gradients():
    model, (X, y) = small_net(), batch()
    result = diagnostics.gradient_norms(model, X, y, LOSS)
    dense = [layer for _, layer in diagnostics.dense_layers(model)]
    assert result.layer_names == ("layers[0]", "layers[2].block[0]", "layers[3]")
    loss = lambda: model.compute_gradients(X, y, LOSS)               # noqa: E731
    expected = [np.linalg.norm(finite_difference(loss, layer.weight)) for layer in dense]
    np.testing.assert_allclose(result.weight_norms, expected, rtol=1e-6)


def test_signal_norms_are_norms_of_finite_difference_gradients_of_the_activations():
    """∂L/∂a at a Dense layer's output, by finite differences of the loss of the layers after
    it applied to a: a model built from those layers' configs and parameters."""
    model, (X, y) = small_net(), batch()
    result = diagnostics.gradient_norms(model, X, y, LOSS)
    layers, expected = model.layers, []
    for split in (1, 3):          # the outputs of layers[0] and of the block around its Dense
        head = layers[:split]
        offset = sum(layer.n_params for layer in head)
        tail = Sequential([from_config(layer.get_config()) for layer in layers[split:]],
                          backend="reference", dtype="float64")
        tail.parameters()[...] = model.parameters()[offset:]
        A = X.copy()
        for layer, ws in zip(head, [l._workspace(len(X), np.float64) for l in head]):
            A = layer._forward(model._k, A, ws, training=True).copy()
        expected.append(np.linalg.norm(
            finite_difference(lambda: tail.compute_gradients(A, y, LOSS), A)))
    logits = model._forward(X, training=True, logits=True)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1                                    # ∂L/∂z = (p − onehot)/n
    expected.append(np.linalg.norm(p / len(y)))
    np.testing.assert_allclose(result.signal_norms, expected, rtol=1e-6)


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_every_backend_reports_the_reference_norms(backend):
    X, y = batch(n=16, n_in=8, n_classes=4, seed=1)
    layers = lambda: ([Dense(8, 16, "sigmoid")] + [Dense(16, 16, "sigmoid") for _ in range(5)]  # noqa: E731
                      + [BatchNorm(16), Residual([Dense(16, 16, "relu"), Dense(16, 16)]),
                         Dense(16, 4)])
    ref = diagnostics.gradient_norms(Sequential(layers(), backend="reference"), X, y, LOSS)
    got = diagnostics.gradient_norms(Sequential(layers(), backend=backend), X, y, LOSS)
    assert got.layer_names == ref.layer_names
    np.testing.assert_allclose(got.weight_norms, ref.weight_norms, rtol=1e-4)
    np.testing.assert_allclose(got.signal_norms, ref.signal_norms, rtol=1e-4)


def test_measuring_changes_neither_parameters_nor_running_statistics():
    model, (X, y) = small_net(), batch()
    params, state = model.parameters().copy(), model._state.copy()
    diagnostics.gradient_norms(model, X, y, LOSS)
    np.testing.assert_array_equal(model.parameters(), params)
    np.testing.assert_array_equal(model._state, state)


def test_decay_factor_recovers_a_geometric_decay():
    norms = 3.0 * 0.25 ** np.arange(10)[::-1]          # the first layer 0.25⁹ of the last
    assert diagnostics.decay_factor(norms) == pytest.approx(0.25)
    assert diagnostics.decay_factor(norms[::-1]) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="underflowed"):
        diagnostics.decay_factor([0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="at least 2"):
        diagnostics.decay_factor([1.0])


def train(backend, track, fuse=True):
    X, y = batch(n=64, n_in=8, n_classes=4, seed=2)
    model = Sequential([Dense(8, 16, "relu"), Dense(16, 16, "relu"), Dense(16, 4)],
                       backend=backend, seed=1)
    model.fuse = fuse
    history = model.fit(X, y, LOSS, optimizer=fastnn.SGD(0.1), epochs=3, batch_size=16,
                        verbose=0, track_gradients=track)
    return model, history, (X, y)


@pytest.mark.parametrize("backend", ["reference", *COMPILED_BACKENDS])
def test_fit_records_the_norms_of_the_synced_weights_and_tracking_changes_no_step(backend):
    model, history, (X, y) = train(backend, track=True)
    norms = history["gradient_norms"]
    assert len(norms) == 3 and all(n.shape == (3,) for n in norms)
    rows = diagnostics.probe_rows(len(X), 16)
    now = diagnostics.gradient_norms(model, X[rows], y[rows], LOSS).weight_norms
    np.testing.assert_allclose(norms[-1], now, rtol=1e-6)
    untracked, plain, _ = train(backend, track=False)
    assert "gradient_norms" not in plain.history
    np.testing.assert_array_equal(model.parameters(), untracked.parameters())
    assert "gradient_norms" not in repr(history)


def test_fit_rejects_a_non_boolean_track_gradients():
    X, y = batch()
    with pytest.raises(TypeError, match="track_gradients"):
        small_net().fit(X, y, LOSS, epochs=1, verbose=0, track_gradients="yes")


def test_probe_rows_spread_over_the_data_without_repeats():
    rows = diagnostics.probe_rows(100, 8)
    assert rows[0] == 0 and rows[-1] == 99 and len(set(rows)) == 8
    assert len(diagnostics.probe_rows(5, 32)) == 5
