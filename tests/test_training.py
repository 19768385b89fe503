"""Learning on real problems: XOR and scikit-learn's digits, on every usable backend."""
import time

import numpy as np
import pytest

import fastnn
from conftest import COMPILED_BACKENDS
from fastnn.datasets import load_digits_split

BACKENDS = ["reference", *COMPILED_BACKENDS]


@pytest.fixture(scope="module")
def digits():
    return load_digits_split(seed=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_2_4_1_sigmoid_network_learns_xor(backend, seed):
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    y = np.array([0, 1, 1, 0])
    model = fastnn.Sequential([fastnn.Dense(2, 4, "sigmoid"), fastnn.Dense(4, 1, "sigmoid")],
                              backend=backend, seed=seed)
    model.fit(X, y, loss="binary_cross_entropy", optimizer=fastnn.SGD(2.0), epochs=2000,
              batch_size=4, verbose=0)
    np.testing.assert_array_equal(model.predict(X)[:, 0] > 0.5, y == 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optimizer, minimum", [
    (fastnn.Adam(1e-3), 0.97),
    (fastnn.SGD(0.02, momentum=0.9), 0.97),
    (fastnn.SGD(0.1), 0.96),
])
def test_relu_mlp_reaches_97_percent_on_digits(digits, backend, optimizer, minimum):
    X_train, X_test, y_train, y_test = digits
    model = fastnn.Sequential([fastnn.Dense(64, 128, "relu"), fastnn.Dense(128, 10)],
                              backend=backend, seed=0)
    start = time.perf_counter()
    history = model.fit(X_train, y_train, loss="cross_entropy", optimizer=optimizer, epochs=30,
                        batch_size=32, validation_data=(X_test, y_test), verbose=0)
    elapsed = time.perf_counter() - start
    accuracy = model.evaluate(X_test, y_test, loss="cross_entropy")["accuracy"]
    print(f"{backend} {optimizer!r}: test accuracy {accuracy:.4f} in {elapsed:.2f} s")
    assert accuracy >= minimum
    assert history["val_accuracy"][-1] == accuracy
    assert history["loss"][-1] < history["loss"][0] / 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_weights_and_same_run(digits, backend):
    X_train, _, y_train, _ = digits

    def run(seed):
        model = fastnn.Sequential([fastnn.Dense(64, 32, "tanh"), fastnn.BatchNorm(32),
                                   fastnn.Dense(32, 10)], backend=backend, seed=seed)
        initial = model.parameters().copy()
        history = model.fit(X_train[:256], y_train[:256], loss="cross_entropy",
                            optimizer=fastnn.Adam(1e-2), epochs=3, verbose=0)
        return initial, model.parameters().copy(), history["loss"]

    first, again, other = run(0), run(0), run(1)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_divergence_is_reported_not_hidden():
    X = np.linspace(-1, 1, 64).reshape(-1, 1) * 1e3
    model = fastnn.Sequential([fastnn.Dense(1, 8, "relu"), fastnn.Dense(8, 1)],
                              backend="reference")
    with pytest.raises(FloatingPointError, match="lower the learning rate"), \
            np.errstate(all="ignore"):
        model.fit(X, X[:, 0] ** 2, loss="mse", optimizer=fastnn.SGD(10.0), epochs=50,
                  verbose=0)
