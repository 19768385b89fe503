"""The reference backend's gradients against central finite differences, in float64.

Every activation, every loss (with identity and with softmax/sigmoid last layers, and
weighted by rows), BatchNorm in training mode, Residual, Dropout with a fixed mask, and
networks end to end must agree to a relative error below 1e-6: ‖g − g_fd‖ / (‖g‖ + ‖g_fd‖).
"""
import numpy as np
import pytest

import fastnn
from fastnn.kernels import ACTIVATIONS


def numeric_gradient(model, X, y, loss, eps=1e-6, sample_weight=None):
    """∂L/∂θ_i ≈ (L(θ + ε e_i) − L(θ − ε e_i)) / 2ε for every parameter θ_i."""
    theta = model.parameters()
    grad = np.empty_like(theta)
    for i in range(theta.size):
        old = theta[i]
        theta[i] = old + eps
        up = model.compute_gradients(X, y, loss, sample_weight)
        theta[i] = old - eps
        down = model.compute_gradients(X, y, loss, sample_weight)
        theta[i] = old
        grad[i] = (up - down) / (2 * eps)
    return grad


def relative_error(model, X, y, loss, sample_weight=None):
    model.compute_gradients(X, y, loss, sample_weight)
    analytic = model.gradients().copy()
    numeric = numeric_gradient(model, X, y, loss, sample_weight=sample_weight)
    return np.linalg.norm(analytic - numeric) / (np.linalg.norm(analytic)
                                                 + np.linalg.norm(numeric))


def data(loss, n_in=5, n_out=3, batch=7, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((batch, n_in))
    if loss == "cross_entropy":
        y = rng.integers(0, n_out, batch)
    elif loss == "binary_cross_entropy":
        y = rng.integers(0, 2, (batch, n_out)).astype(float)
    else:
        y = rng.standard_normal((batch, n_out))
    return X, y


def model(layers):
    return fastnn.Sequential(layers, backend="reference", dtype="float64", seed=3)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation(activation):
    net = model([fastnn.Dense(5, 4, activation), fastnn.Dense(4, 3)])
    assert relative_error(net, *data("mse"), "mse") < 1e-6


@pytest.mark.parametrize("loss, last", [
    ("mse", "identity"), ("mse", "sigmoid"), ("mse", "softmax"),
    ("cross_entropy", "identity"), ("cross_entropy", "softmax"),
    ("binary_cross_entropy", "identity"), ("binary_cross_entropy", "sigmoid"),
])
def test_every_loss(loss, last):
    net = model([fastnn.Dense(5, 4, "tanh"), fastnn.Dense(4, 3, last)])
    assert relative_error(net, *data(loss), loss) < 1e-6


def test_batchnorm_training_mode():
    net = model([fastnn.Dense(5, 4, "tanh"), fastnn.BatchNorm(4), fastnn.Dense(4, 3)])
    net.layers[1].gamma[...] = [0.5, 1.5, -1.0, 2.0]      # away from the identity start
    net.layers[1].beta[...] = [0.1, -0.2, 0.3, 0.0]
    assert relative_error(net, *data("cross_entropy"), "cross_entropy") < 1e-6


def test_residual():
    block = [fastnn.Dense(4, 4, "tanh"), fastnn.Dense(4, 4, "sigmoid")]
    net = model([fastnn.Dense(5, 4, "relu"), fastnn.Residual(block), fastnn.Dense(4, 3)])
    assert relative_error(net, *data("mse"), "mse") < 1e-6


def test_three_layer_network_end_to_end():
    net = model([fastnn.Dense(5, 8, "leaky_relu"), fastnn.Dense(8, 6, "sigmoid"),
                 fastnn.Dense(6, 3, "softmax")])
    assert relative_error(net, *data("cross_entropy"), "cross_entropy") < 1e-6


def test_finite_differences_catch_a_wrong_gradient(monkeypatch):
    """The check itself can fail: a kernel with a deliberately wrong derivative is caught."""
    from fastnn.kernels import reference

    real = reference.dense_backward

    def wrong(dA, X, W, A, act, dX, dW, db, Z=None):
        real(dA, X, W, A, act, dX, dW, db, Z)
        dW *= 1.01
    monkeypatch.setattr(reference, "dense_backward", wrong)
    net = model([fastnn.Dense(5, 4, "tanh"), fastnn.Dense(4, 3)])
    assert relative_error(net, *data("mse"), "mse") > 1e-4


WEIGHTS = np.array([0.5, 2.0, 0.0, 1.0, 3.0, 0.25, 1.5])


@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "binary_cross_entropy"])
def test_every_loss_weighted_by_rows(loss):
    net = model([fastnn.Dense(5, 4, "tanh"), fastnn.Dense(4, 3)])
    assert relative_error(net, *data(loss), loss, sample_weight=WEIGHTS) < 1e-6


def test_dropout_with_a_fixed_mask():
    """compute_gradients draws the masks of the model's next step, the same on every call:
    the loss is a fixed function of the weights, which finite differences can check."""
    net = model([fastnn.Dense(5, 8, "tanh"), fastnn.Dropout(0.4), fastnn.Dense(8, 3)])
    X, y = data("mse")
    assert relative_error(net, X, y, "mse") < 1e-6
    ws = net._workspace(len(X))["layers"][1]
    assert (ws["out"] == 0).any() and (ws["out"] != 0).any()     # some units were dropped


def test_a_network_mixing_the_new_parts():
    net = model([fastnn.Dense(5, 8, "gelu"), fastnn.Dropout(0.3), fastnn.BatchNorm(8),
                 fastnn.Residual([fastnn.Dense(8, 8, "silu"), fastnn.Dropout(0.2)]),
                 fastnn.Dense(8, 6, "gelu_tanh"), fastnn.Dense(6, 4, "selu"),
                 fastnn.Dense(4, 3)])
    X, y = data("cross_entropy")
    assert relative_error(net, X, y, "cross_entropy", sample_weight=WEIGHTS) < 1e-6


@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "binary_cross_entropy"])
def test_weight_two_is_the_row_twice_in_the_batch(loss):
    """Under the weighted mean Σ wᵢ lᵢ / Σ wᵢ, weight 2 on a row is that row twice."""
    X, y = data(loss)
    w = np.ones(len(X))
    w[3] = 2.0
    weighted = model([fastnn.Dense(5, 4, "tanh"), fastnn.Dense(4, 3)])
    twice = model([fastnn.Dense(5, 4, "tanh"), fastnn.Dense(4, 3)])
    value = weighted.compute_gradients(X, y, loss, sample_weight=w)
    repeat = np.r_[np.arange(len(X)), 3]
    assert value == pytest.approx(twice.compute_gradients(X[repeat], y[repeat], loss),
                                  rel=1e-12)
    np.testing.assert_allclose(weighted.gradients(), twice.gradients(), rtol=1e-10,
                               atol=1e-14)
