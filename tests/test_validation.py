"""Bad input gets a clear error naming the argument, and leaves the model unchanged."""
import numpy as np
import pytest

import fastnn


@pytest.fixture
def model():
    return fastnn.Sequential([fastnn.Dense(4, 6, "relu"), fastnn.Dense(6, 3)],
                             backend="reference")


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((10, 4)), rng.integers(0, 3, 10)


def nan_at(a, index):
    a = np.array(a, dtype=float)
    a[index] = np.nan
    return a


BAD_FIT_CALLS = [
    # (description, X transform, y transform, extra kwargs, error, message pattern)
    ("too few columns", lambda X: X[:, :3], None, {}, ValueError, "X has 3 columns but the model takes 4"),
    ("1-D X", lambda X: X[:, 0], None, {}, ValueError, "X must be 2-D"),
    ("row mismatch", None, lambda y: y[:7], {}, ValueError, "X has 10 rows but y has 7"),
    ("NaN in X", lambda X: nan_at(X, (2, 1)), None, {}, ValueError, r"X contains 1 NaN or Inf.*\(2, 1\)"),
    ("Inf in X", lambda X: np.where(X > 1, np.inf, X), None, {}, ValueError, "X contains .* NaN or Inf"),
    ("NaN in y", None, lambda y: nan_at(y, 3), {}, ValueError, "y contains 1 NaN or Inf"),
    ("X beyond float32", lambda X: np.where(np.arange(4) == 2, 1e39, X.astype(float)), None, {},
     ValueError, r"X holds 10 value\(s\) beyond float32's range .* first at index \(0, 2\)"),
    ("y beyond float32", None, lambda y: np.full((10, 3), -1e39), {"loss": "mse"}, ValueError,
     r"y holds 30 value\(s\) beyond float32's range"),
    ("label too big", None, lambda y: np.where(y == 0, 3, y), {}, ValueError, r"class label 3 .* \[0, 3\)"),
    ("negative label", None, lambda y: np.where(y == 0, -1, y), {}, ValueError, r"class label -1"),
    ("fractional label", None, lambda y: y + 0.5, {}, ValueError, "non-integer class labels"),
    ("2-D labels", None, lambda y: y.reshape(-1, 1), {}, ValueError, "y must be 1-D integer class labels"),
    ("string X", lambda X: X.astype(str), None, {}, TypeError, "X must hold real numbers"),
    ("object y", None, lambda y: np.array(["a"] * 10, dtype=object), {}, TypeError, "y must hold real numbers"),
    ("ragged X", lambda X: [[1, 2, 3, 4], [1, 2]], None, {}, TypeError, "X could not be converted"),
    ("empty X", lambda X: X[:0], lambda y: y[:0], {}, ValueError, "X is empty"),
    ("unknown loss", None, None, {"loss": "hinge"}, ValueError, "unknown loss 'hinge'"),
    ("bad optimizer", None, None, {"optimizer": "adam"}, TypeError, "optimizer must be a fastnn optimizer"),
    ("zero epochs", None, None, {"epochs": 0}, ValueError, "epochs must be at least 1"),
    ("float batch", None, None, {"batch_size": 2.5}, TypeError, "batch_size must be an integer"),
    ("bad validation", None, None, {"validation_data": np.zeros((3, 4))}, ValueError, "validation_data must be a pair"),
    ("NaN in X_val", None, None, {"validation_data": (np.full((2, 4), np.nan), [0, 1])}, ValueError, "X_val contains"),
    ("mse target width", None, lambda y: np.zeros((10, 2)), {"loss": "mse"}, ValueError, r"y has shape \(10, 2\) but the model outputs 3"),
    ("bce non-binary", None, lambda y: np.full((10, 3), 0.5), {"loss": "binary_cross_entropy"}, ValueError, "only 0 and 1"),
]


@pytest.mark.parametrize("what, fx, fy, kwargs, error, pattern", BAD_FIT_CALLS,
                         ids=[c[0] for c in BAD_FIT_CALLS])
def test_bad_fit_input_is_rejected_and_weights_stay(model, data, what, fx, fy, kwargs, error,
                                                    pattern):
    X, y = data
    X = fx(X) if fx else X
    y = fy(y) if fy else y
    before = model.parameters().copy()
    args = {"loss": "cross_entropy", "verbose": 0, **kwargs}
    with pytest.raises(error, match=pattern):
        model.fit(X, y, **args)
    np.testing.assert_array_equal(model.parameters(), before)


def test_predict_and_evaluate_check_their_input(model, data):
    X, y = data
    with pytest.raises(ValueError, match="X has 5 columns"):
        model.predict(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="X contains"):
        model.predict(nan_at(X, (0, 0)))
    with pytest.raises(ValueError, match="class label 7"):
        model.evaluate(X, np.full(10, 7), loss="cross_entropy")


@pytest.mark.parametrize("layout", ["C", "F"])
def test_non_finite_values_are_counted_and_found_past_the_first_blocks(layout):
    """NaN and Inf counted exactly and the first one found many blocks of rows in, in either
    layout; finite values near the dtype's limit pass."""
    from fastnn.validation import _non_finite, check_finite
    X = np.zeros((5000, 40))
    X[4321, 7], X[4999, 0], X[4400, 7] = np.nan, -np.inf, np.inf
    X[:, 3] = 1e308
    X = np.asfortranarray(X) if layout == "F" else X
    assert _non_finite(X) == (3, (4321, 7))
    huge = np.full((6, 3), 3e38, np.float32)
    assert _non_finite(huge) is None and _non_finite(X[:4000]) is None
    check_finite(huge, "X")
    assert _non_finite(np.array([1.0, np.nan])) == (1, (1,))


def test_integer_and_float64_inputs_are_converted(model, data):
    X, y = data
    as_int = model.predict(np.round(X).astype(np.int64))
    as_f64 = model.predict(np.round(X))
    assert as_int.dtype == np.float32
    np.testing.assert_array_equal(as_int, as_f64)
    model.fit(np.round(X).astype(np.int32), y.astype(np.float64), loss="cross_entropy",
              epochs=1, verbose=0)
    model.fit(X.tolist(), y.tolist(), loss="cross_entropy", epochs=1, verbose=0)


@pytest.mark.parametrize("last, loss", [("relu", "cross_entropy"), ("sigmoid", "cross_entropy"),
                                        ("softmax", "binary_cross_entropy"),
                                        ("tanh", "binary_cross_entropy")])
def test_loss_and_last_activation_must_agree(last, loss):
    model = fastnn.Sequential([fastnn.Dense(4, 3, last)], backend="reference")
    with pytest.raises(ValueError, match=f"loss='{loss}' needs the last layer's activation"):
        model.fit(np.zeros((4, 4)), [0, 1, 0, 1], loss=loss, verbose=0)


@pytest.mark.parametrize("build, error, pattern", [
    (lambda: fastnn.Dense(4, 3, "swish"), ValueError, "unknown activation 'swish'"),
    (lambda: fastnn.Dense(4, 3, init="glorot"), ValueError, "unknown init 'glorot'"),
    (lambda: fastnn.Dense(0, 3), ValueError, "in_features must be at least 1"),
    (lambda: fastnn.Dense(4.0, 3), TypeError, "in_features must be an integer"),
    (lambda: fastnn.Sequential([fastnn.Dense(4, 3)], backend="tpu"), ValueError, "'tpu' is not a backend"),
    (lambda: fastnn.Sequential([fastnn.Dense(4, 3)], dtype="float16"), ValueError, "dtype must be"),
    (lambda: fastnn.Sequential([fastnn.Dense(4, 3)], seed=-1), ValueError, "seed must be"),
    (lambda: fastnn.Sequential([]), TypeError, "non-empty list"),
    (lambda: fastnn.Sequential([fastnn.Dense(4, 3), fastnn.Dense(4, 2)]), ValueError,
     r"layer 1 \(Dense\(4, 2.*takes 4 inputs but layer 0 .* outputs 3"),
    (lambda: fastnn.Residual(fastnn.Dense(4, 3)), ValueError, "Residual block maps 4 features to 3"),
    (lambda: fastnn.Residual([]), TypeError, "non-empty list of layers"),
    (lambda: fastnn.SGD(-0.1), ValueError, "lr must be a finite positive"),
    (lambda: fastnn.SGD(0.1, momentum=1.0), ValueError, "momentum must be in"),
    (lambda: fastnn.Adam(beta1=1.5), ValueError, "beta1 must be in"),
    (lambda: fastnn.BatchNorm(4, momentum=2.0), ValueError, "momentum must be in"),
])
def test_bad_construction_is_rejected(build, error, pattern):
    with pytest.raises(error, match=pattern):
        build()


def test_a_layer_belongs_to_one_model():
    layer = fastnn.Dense(4, 3)
    with pytest.raises(RuntimeError, match="no parameters until it is part of a model"):
        layer.weight
    fastnn.Sequential([layer], backend="reference")
    with pytest.raises(ValueError, match="already belongs to a model"):
        fastnn.Sequential([layer], backend="reference")


def test_weights_are_writable_views_into_the_flat_buffer(model):
    dense = model.layers[0]
    assert dense.weight.shape == (4, 6) and dense.bias.shape == (6,)
    dense.weight[...] = 0
    dense.bias = np.arange(6)
    flat = model.parameters()
    np.testing.assert_array_equal(flat[:24], 0)
    np.testing.assert_array_equal(flat[24:30], np.arange(6))
    assert np.shares_memory(flat, dense.weight)
    out = model.predict(np.ones((2, 4)))
    expected = np.arange(6) @ model.layers[1].weight + model.layers[1].bias
    np.testing.assert_allclose(out, np.tile(expected, (2, 1)), rtol=1e-6)


@pytest.mark.parametrize("activation, init", [("relu", "he_normal"), ("leaky_relu", "he_normal"),
                                              ("sigmoid", "xavier_uniform"),
                                              ("tanh", "xavier_uniform"),
                                              ("identity", "xavier_uniform"),
                                              ("elu", "he_normal"), ("selu", "lecun_normal"),
                                              ("softplus", "xavier_uniform")])
def test_default_init_follows_the_activation(activation, init):
    assert fastnn.Dense(3, 3, activation).init == init


@pytest.mark.parametrize("init, std", [("xavier_uniform", np.sqrt(2 / 700)),
                                       ("xavier_normal", np.sqrt(2 / 700)),
                                       ("he_uniform", np.sqrt(2 / 400)),
                                       ("he_normal", np.sqrt(2 / 400)),
                                       ("lecun_normal", np.sqrt(1 / 400))])
def test_init_scale(init, std):
    model = fastnn.Sequential([fastnn.Dense(400, 300, init=init)], backend="reference",
                              dtype="float64")
    W = model.layers[0].weight
    assert abs(W.std() / std - 1) < 0.02
    assert abs(W.mean()) < 0.01 * std * 10
    np.testing.assert_array_equal(model.layers[0].bias, 0)
    if init.endswith("uniform"):
        assert np.abs(W).max() <= np.sqrt(3) * std
