"""Standardize: statistics as model state, constant features, gradients, files and copies."""
import copy
import pickle

import numpy as np
import pytest

import fastnn
from fastnn.preprocessing import adapt_standardize


def data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal([5.0, -3.0, 100.0, 0.0], [2.0, 0.5, 30.0, 1e-3], (n, 4))
    return X, rng.integers(0, 3, n)


def network(scale, dtype="float64"):
    return fastnn.Sequential([scale, fastnn.Dense(4, 8, "tanh"), fastnn.Dense(8, 3)],
                             backend="reference", seed=0, dtype=dtype)


def test_adapt_sets_mean_and_population_std_as_state_not_parameters():
    X, _ = data()
    scale = fastnn.Standardize(4)
    model = network(scale)
    assert (scale.n_params, scale.n_state) == (0, 8)
    assert model.parameters().size == (4 + 1) * 8 + (8 + 1) * 3
    np.testing.assert_array_equal(model.predict(X), network(fastnn.Standardize(4)).predict(X))
    assert scale.adapt(X) is scale
    np.testing.assert_allclose(scale.mean, X.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(scale.std, X.std(axis=0), rtol=1e-12)
    assert np.shares_memory(scale.mean, model._state) and np.shares_memory(scale.std,
                                                                          model._state)
    out = scale._forward(None, X, scale._workspace(len(X), np.float64), training=False)
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(out.std(axis=0), 1, rtol=1e-12)


def test_a_constant_feature_is_centred_never_divided_by_zero():
    X, _ = data()
    X[:, 1] = 7.25
    scale = fastnn.Standardize(4)
    network(scale).layers[0].adapt(X)
    assert scale.std[1] == 1.0 and scale.mean[1] == 7.25
    out = scale._forward(None, X, scale._workspace(len(X), np.float64), training=False)
    assert np.isfinite(out).all() and (out[:, 1] == 0).all()
    # a feature that varies by very little is still scaled, not treated as constant
    assert scale.std[3] == pytest.approx(X[:, 3].std())


def test_adapt_before_the_model_is_built():
    X, _ = data()
    scale = fastnn.Standardize(4).adapt(X)
    model = network(scale, dtype="float32")
    np.testing.assert_allclose(scale.mean, X.mean(axis=0), rtol=1e-6)
    assert scale.std.dtype == np.float32
    np.testing.assert_array_equal(model._state, np.concatenate([scale.mean, scale.std]))


def test_gradients_through_standardize_match_finite_differences():
    """Standardize between two Dense layers: the first layer's gradient depends on dX = dY/s."""
    X, y = data(16)
    scale = fastnn.Standardize(4)
    model = fastnn.Sequential([fastnn.Dense(4, 4, "tanh"), scale, fastnn.Dense(4, 3)],
                              backend="reference", seed=1, dtype="float64")
    rng = np.random.default_rng(2)
    scale.mean[...] = rng.normal(0, 1, 4)
    scale.std[...] = rng.uniform(0.1, 3, 4)
    model.compute_gradients(X, y, "cross_entropy")
    analytic = model.gradients().copy()
    theta, numeric, eps = model.parameters(), np.empty_like(analytic), 1e-6
    for i in range(theta.size):
        old = theta[i]
        theta[i] = old + eps
        up = model.compute_gradients(X, y, "cross_entropy")
        theta[i] = old - eps
        down = model.compute_gradients(X, y, "cross_entropy")
        theta[i] = old
        numeric[i] = (up - down) / (2 * eps)
    error = np.linalg.norm(analytic - numeric) / (np.linalg.norm(analytic)
                                                  + np.linalg.norm(numeric))
    assert error < 1e-6


def test_training_leaves_the_statistics_alone_and_learns():
    X, y = data()
    y = (X[:, 2] > 100).astype(int)                  # a feature on a scale of 100
    scale = fastnn.Standardize(4)
    model = network(scale)
    adapt_standardize(model, X)
    before = model._state.copy()
    model.fit(X, y, loss="cross_entropy", optimizer=fastnn.Adam(1e-2), epochs=20, verbose=0)
    np.testing.assert_array_equal(model._state, before)
    assert model.evaluate(X, y, loss="cross_entropy")["accuracy"] > 0.95


def test_save_load_pickle_and_deepcopy_keep_the_statistics(tmp_path):
    X, _ = data()
    model = network(fastnn.Standardize(4).adapt(X))
    model.save(tmp_path / "m.fnn")
    for other in (fastnn.load(tmp_path / "m.fnn", backend="reference"),
                  pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert repr(other.layers[0]) == "Standardize(4)"
        np.testing.assert_array_equal(other.layers[0].std, model.layers[0].std)
        np.testing.assert_array_equal(other.predict(X), model.predict(X))


def test_bad_input_is_refused_naming_the_argument():
    scale = fastnn.Standardize(3)
    with pytest.raises(ValueError, match="X has 2 columns but the model takes 3"):
        scale.adapt(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="NaN or Inf"):
        scale.adapt(np.array([[1.0, np.nan, 2.0]]))
    with pytest.raises(ValueError, match="num_features must be at least 1"):
        fastnn.Standardize(0)
    plain = fastnn.Sequential([fastnn.Dense(3, 2)], backend="reference")
    with pytest.raises(ValueError, match=r"needs fastnn.Standardize\(3\) as the model's first"):
        adapt_standardize(plain, np.zeros((4, 3)))
