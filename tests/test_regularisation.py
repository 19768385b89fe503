"""Dropout, row and class weights, and the activations that keep z, at the model API: what
they compute, what they refuse, and that they leave the weights alone when they refuse.

(Kernels: tests/test_kernels.py; gradients: tests/test_gradcheck.py; fused against the
layer path and the reference: tests/test_fused_trainers.py.)
"""
import pickle

import numpy as np
import pytest

import fastnn
from fastnn import Dense, Dropout, Sequential
from fastnn.kernels import ACTIVATIONS
from fastnn.plan import build

BACKENDS = [name for name in ("reference", "numba_cpu", "cython")
            if fastnn.available_backends()[name].usable]


def data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 6)), rng.integers(0, 3, n)


def net(backend="reference", p=0.3, seed=1):
    return Sequential([Dense(6, 16, "relu"), Dropout(p), Dense(16, 3)], backend=backend,
                      seed=seed)


# -- Dropout ----------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan"), "0.5"])
def test_dropout_p_must_lie_in_zero_one(p):
    with pytest.raises((ValueError, TypeError), match="p must"):
        Dropout(p)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_is_the_identity_in_predict_and_evaluate(backend):
    X, y = data()
    with_dropout, without = net(backend, 0.5), net(backend, 0.0)
    np.testing.assert_array_equal(with_dropout.predict(X), without.predict(X))
    assert with_dropout.evaluate(X, y, "cross_entropy") == without.evaluate(X, y,
                                                                           "cross_entropy")


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_run_and_another_seed_other_masks(backend):
    X, y = data()
    runs = []
    for seed in (1, 1, 2):
        model = net(backend, seed=seed)
        model.set_weights(net(backend, seed=1).get_weights())   # same start, masks by seed
        model.fit(X, y, "cross_entropy", epochs=2, batch_size=16, shuffle=False, verbose=0)
        runs.append(model.parameters().copy())
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])


def test_dropout_trains_with_fresh_masks_each_step():
    """Two epochs over the same minibatch do not repeat the masks: the step count keys them."""
    X, y = data(16)
    model = net()
    model.compute_gradients(X, y, "cross_entropy")
    first = model.gradients().copy()
    model.fit(X, y, "cross_entropy", optimizer=fastnn.SGD(1e-12), epochs=1, batch_size=16,
              verbose=0)
    model.compute_gradients(X, y, "cross_entropy")
    assert model._steps[0] == 1 and not np.allclose(model.gradients(), first)


def test_dropout_width_is_inferred_and_saved(tmp_path):
    model = Sequential([Dropout(0.2), Dense(6, 8, "gelu"),
                        fastnn.Residual([Dense(8, 8, "silu"), Dropout(0.1)]), Dense(8, 3)])
    assert model.layers[0].in_features == 6
    path = tmp_path / "m.fnn"
    model.save(path)
    loaded = fastnn.load(path)
    assert [type(l).__name__ for l in loaded.layers] == ["Dropout", "Dense", "Residual", "Dense"]
    assert loaded.layers[0].p == 0.2
    X = data()[0]
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    clone = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(clone.predict(X), model.predict(X))


def test_a_dropout_alone_has_no_width():
    with pytest.raises(ValueError, match="cannot be inferred"):
        Sequential([Dropout(0.1)])


# -- pre-activations --------------------------------------------------------------------------
def test_only_gelu_and_silu_layers_keep_their_preactivation():
    """z is stored for the layers that need it and no others: a relu/tanh network's plan is
    as large as before."""
    loss = fastnn.losses.get("mse")
    plain = Sequential([Dense(6, 16, "relu"), Dense(16, 8, "tanh"), Dense(8, 3)])
    assert build(plain, loss, 32).aux_size == 1          # nothing (the minimum allocation)
    mixed = Sequential([Dense(6, 16, "gelu"), Dense(16, 8, "tanh"), Dense(8, 3, "silu")])
    assert build(mixed, loss, 32).aux_size == 32 * (16 + 3)
    ws = mixed._workspace(4)["layers"]
    assert [("Z" in w) for w in ws] == [True, False, True]


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "silu"])
def test_new_activations_default_to_he_init(activation):
    layer = Dense(400, 300, activation)
    Sequential([layer], seed=0)
    assert layer.init == "he_normal"
    assert layer.weight.std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)


def test_activations_match_pytorchs_values():
    """The values PyTorch gives (F.gelu, F.gelu(approximate="tanh"), F.silu, F.elu, F.selu,
    F.softplus) at these points, written here: PyTorch is not a test dependency."""
    z = np.array([[-3.0, -1.0, -0.1, 0.0, 0.5, 2.0]])
    expected = {   # torch 2.13.0, float64, printed to 12 significant digits
        "gelu": [-0.00404969409489, -0.158655253931, -0.0460172162723, 0.0, 0.345731230637,
                 1.9544997361],
        "gelu_tanh": [-0.00363739208177, -0.158808009392, -0.0460172489546, 0.0,
                      0.345714009825, 1.95459769409],
        "silu": [-0.142277619533, -0.26894142137, -0.0475020812521, 0.0, 0.311229665601,
                 1.76159415596],
        "elu": [-0.950212931632, -0.632120558829, -0.095162581964, 0.0, 0.5, 2.0],
        "selu": [-1.67056872877, -1.11133073781, -0.167305272624, 0.0, 0.525350493678,
                 2.10140197471],
        "softplus": [0.0485873515737, 0.313261687518, 0.644396660074, 0.69314718056,
                     0.97407698418, 2.12692801104],
    }
    from fastnn.kernels import reference
    for name, want in expected.items():
        out = z.copy()
        reference._activate(out, ACTIVATIONS[name])
        np.testing.assert_allclose(out[0], want, rtol=1e-10, atol=1e-12, err_msg=name)


# -- weights ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"sample_weight": np.ones(5)}, r"sample_weight must have shape \(64,\)"),
    ({"sample_weight": -np.ones(64)}, "non-negative"),
    ({"sample_weight": np.r_[np.nan, np.ones(63)]}, "NaN or Inf"),
    ({"sample_weight": np.zeros(64)}, "all zero"),
    ({"class_weight": {5: 2.0}}, "label 5, which is not among the classes"),
    ({"class_weight": {0: -1.0}}, r"class_weight\[0\] must be"),
    ({"class_weight": "even"}, "unknown class_weight"),
    ({"class_weight": [1, 2, 3]}, "class_weight must be a dict"),
    ({"clip_norm": float("nan")}, "clip_norm must be"),
])
def test_bad_weights_are_refused_and_the_weights_stay(kwargs, message):
    X, y = data()
    model = net()
    before = model.parameters().copy()
    with pytest.raises((ValueError, TypeError), match=message):
        model.fit(X, y, "cross_entropy", epochs=1, verbose=0, **kwargs)
    np.testing.assert_array_equal(model.parameters(), before)


def test_class_weight_is_for_cross_entropy_only():
    X = data()[0]
    model = Sequential([Dense(6, 3)])
    with pytest.raises(ValueError, match="cross-entropy losses only"):
        model.fit(X, np.ones((64, 3)), "mse", class_weight={0: 2.0}, verbose=0)
    bce = Sequential([Dense(6, 2)])
    with pytest.raises(ValueError, match="one label per row"):
        bce.fit(X, np.ones((64, 2)), "binary_cross_entropy", class_weight="balanced",
                verbose=0)


def test_balanced_class_weights_are_sklearns():
    from sklearn.utils.class_weight import compute_class_weight
    y = np.array([0, 0, 0, 0, 1, 2, 2, 0])
    got = fastnn.losses.get("cross_entropy").class_weights(y, "balanced", 4)
    want = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=y)
    np.testing.assert_allclose(got, want[y])
    named = fastnn.losses.get("cross_entropy").class_weights(y, {2: 5.0}, 4)
    np.testing.assert_array_equal(named, np.where(y == 2, 5.0, 1.0))


def test_class_weight_equals_the_same_sample_weight():
    X, y = data()
    a, b = net(p=0.0), net(p=0.0)
    a.fit(X, y, "cross_entropy", epochs=2, batch_size=16, class_weight={1: 3.0}, verbose=0)
    b.fit(X, y, "cross_entropy", epochs=2, batch_size=16, sample_weight=np.where(y == 1, 3, 1),
          verbose=0)
    np.testing.assert_array_equal(a.parameters(), b.parameters())


def test_history_loss_is_the_weighted_mean_and_evaluate_weighs_rows():
    X, y = data()
    w = np.random.default_rng(3).uniform(0, 2, 64)
    model = net(p=0.0)
    history = model.fit(X, y, "cross_entropy", optimizer=fastnn.SGD(1e-12), epochs=1,
                        batch_size=64, sample_weight=w, verbose=0)
    weighted = model.evaluate(X, y, "cross_entropy", sample_weight=w)
    assert history["loss"][0] == pytest.approx(weighted["loss"], rel=1e-5)
    logits = model.predict(X).astype(np.float64)
    lse = np.log(np.exp(logits).sum(axis=1))
    row_loss = lse - logits[np.arange(64), y]
    assert weighted["loss"] == pytest.approx(np.average(row_loss, weights=w), rel=1e-5)
    right = logits.argmax(axis=1) == y
    assert weighted["accuracy"] == pytest.approx(np.average(right, weights=w))
