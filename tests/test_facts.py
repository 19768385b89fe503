"""The textbook facts fastnn is built on, checked on the reference kernels."""
import numpy as np

import fastnn
from fastnn.kernels import RELU, SIGMOID, reference


def sigmoid(z):
    out = np.array(z, dtype=np.float64).reshape(1, -1)
    reference.dense_forward(out, np.eye(out.shape[1]), np.zeros(out.shape[1]), SIGMOID, out)
    return out[0]


def activation_derivative(act, z):
    """f'(z) through the backward kernel: dZ for dA = 1, one sample per z."""
    Z = np.asarray(z, np.float64).reshape(-1, 1)
    A = np.empty_like(Z)
    reference.dense_forward(Z, np.ones((1, 1)), np.zeros(1), act, A)
    dA = np.ones_like(Z)
    reference.dense_backward(dA, Z, np.ones((1, 1)), A, act, None, np.empty((1, 1)),
                             np.empty(1))
    return dA[:, 0]


def test_sigmoid_derivative_is_sigma_times_one_minus_sigma():
    z = np.linspace(-8, 8, 161)
    s = sigmoid(z)
    h = 1e-6
    numeric = (sigmoid(z + h) - sigmoid(z - h)) / (2 * h)
    np.testing.assert_allclose(activation_derivative(SIGMOID, z), s * (1 - s), rtol=1e-12)
    np.testing.assert_allclose(numeric, s * (1 - s), atol=1e-9)


def test_sigmoid_derivative_peaks_at_one_quarter_at_zero():
    z = np.linspace(-10, 10, 20001)
    d = activation_derivative(SIGMOID, z)
    assert d.max() == 0.25
    assert z[d.argmax()] == 0.0
    assert (d <= 0.25).all()


def test_relu_derivative_is_one_for_positive_and_zero_for_negative():
    z = np.array([-3.0, -1e-3, 1e-3, 2.0, 50.0])
    np.testing.assert_array_equal(activation_derivative(RELU, z), [0, 0, 1, 1, 1])


def test_one_sgd_step_moves_each_weight_by_minus_lr_times_its_gradient():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 4)), rng.integers(0, 3, 16)
    model = fastnn.Sequential([fastnn.Dense(4, 5, "sigmoid"), fastnn.Dense(5, 3)],
                              backend="reference", dtype="float64")
    model.compute_gradients(X, y, "cross_entropy")
    before, grads = model.parameters().copy(), model.gradients().copy()
    lr = 0.37
    model.fit(X, y, loss="cross_entropy", optimizer=fastnn.SGD(lr), epochs=1, batch_size=16,
              shuffle=False, verbose=0)
    np.testing.assert_allclose(model.parameters() - before, -lr * grads, rtol=1e-12,
                               atol=1e-15)
    assert np.count_nonzero(grads) == grads.size   # every weight really moved
