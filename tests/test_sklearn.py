"""fastnn.sklearn: the estimators against scikit-learn's own MLP (same parameters, defaults,
initial weights and, with the same solver, the same training step for step), targets of every
kind, bad input, pickling, Pipelines, GridSearchCV across processes and their threads.

scikit-learn's estimator checks are in test_sklearn_checks.py.
"""
import io
import pickle
import warnings

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits, make_multilabel_classification, make_regression
from sklearn.exceptions import ConvergenceWarning, DataConversionWarning, NotFittedError
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.neural_network import MLPClassifier as SkClassifier
from sklearn.neural_network import MLPRegressor as SkRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import LabelBinarizer, StandardScaler
from sklearn.utils import compute_sample_weight
from sklearn.utils._param_validation import InvalidParameterError

from fastnn import BatchNorm, Dense, Residual
from fastnn._sklearn_network import HIDDEN_ACTIVATIONS, weight_decay
from fastnn.sklearn import MLPClassifier, MLPRegressor

from conftest import COMPILED_BACKENDS

#: tests that fit on purpose for fewer epochs than convergence takes say so here once
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

#: backends whose training must equal scikit-learn's step for step (float64)
BACKENDS = ["reference", *COMPILED_BACKENDS]
#: the backend of the quick behavioural tests: compiled when one is usable
QUICK = COMPILED_BACKENDS[0] if COMPILED_BACKENDS else "reference"


def max_diff(ours, theirs) -> float:
    return max(float(np.abs(np.asarray(a, np.float64) - b).max()) for a, b in zip(ours, theirs))


def params_of(est):
    return list(est.coefs_) + list(est.intercepts_)


@pytest.fixture
def data():
    """X (120, 6) and the generator that drew it, fresh for each test."""
    rng = np.random.RandomState(0)
    X = rng.randn(120, 6)
    return X, rng


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16, y, random_state=0)


def quick(cls, **kw):
    return cls(**{"hidden_layer_sizes": (16,), "max_iter": 30, "random_state": 0,
                  "backend": QUICK, **kw})


# -- scikit-learn's parameters and defaults --------------------------------------------------
@pytest.mark.parametrize("ours, theirs", [(MLPClassifier, SkClassifier),
                                          (MLPRegressor, SkRegressor)])
def test_parameters_and_defaults_are_scikit_learns(ours, theirs):
    mine, sk = ours().get_params(), theirs().get_params()
    shared = set(mine) & set(sk)
    assert set(sk) - shared == {"max_fun"}          # lbfgs only: no lbfgs here
    assert {k: mine[k] for k in shared} == {k: sk[k] for k in shared}
    own = {"batch_norm": False, "residual": False, "dropout": 0.0, "clip_norm": None,
           "backend": "auto", "dtype": "float32"}
    if ours is MLPClassifier:
        own["class_weight"] = None
    elif "loss" not in sk:                           # scikit-learn < 1.7 has no loss=
        own["loss"] = "squared_error"
    assert {k: mine[k] for k in set(mine) - shared} == own


def test_positional_parameters_are_scikit_learns():
    assert MLPClassifier((5, 3), "tanh").get_params()["hidden_layer_sizes"] == (5, 3)
    assert MLPRegressor("squared_error", (5,)).get_params()["hidden_layer_sizes"] == (5,)
    with pytest.raises(TypeError):
        MLPClassifier((5,), "relu", "adam")         # solver is keyword-only there too


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
@pytest.mark.parametrize("name, value", [("alpha", -1.0), ("solver", "lbfgs"),
                                         ("activation", "softmax"), ("batch_size", 0),
                                         ("learning_rate_init", 0.0), ("max_iter", 0),
                                         ("momentum", 1.0), ("validation_fraction", 1.0),
                                         ("beta_1", 1.0), ("n_iter_no_change", 0),
                                         ("dropout", 1.0), ("clip_norm", 0.0),
                                         ("backend", "torch"), ("dtype", "float16"),
                                         ("hidden_layer_sizes", 0)])
def test_invalid_hyper_parameters_are_caught_in_fit_naming_the_parameter(cls, name, value):
    est = cls(**{name: value})                     # __init__ only stores
    X, y = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    with pytest.raises((InvalidParameterError, ValueError), match=name):
        est.fit(X, y)


def test_continuous_y_is_not_a_classification_target():
    with pytest.raises(ValueError, match="Unknown label type"):
        quick(MLPClassifier).fit(np.zeros((4, 2)), [0.5, 1.5, 0.1, 2.2])


# -- the same training as scikit-learn --------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("target", ["multiclass", "binary", "multilabel", "regression"])
def test_sgd_training_equals_scikit_learns_step_for_step(data, backend, target):
    """Same random_state: scikit-learn's initial weights; then SGD with Nesterov momentum
    (no shuffling, alpha 0) gives its weights, loss_curve_, n_iter_ and t_ to rounding."""
    X, rng = data
    y = {"multiclass": rng.randint(0, 3, 120), "binary": rng.randint(0, 2, 120),
         "multilabel": (rng.rand(120, 3) > 0.5).astype(int),
         "regression": rng.randn(120, 2)}[target]
    kw = dict(hidden_layer_sizes=(7, 5), solver="sgd", alpha=0.0, batch_size=40,
              shuffle=False, max_iter=5, random_state=1, learning_rate_init=0.05, tol=0.0)
    ours, theirs = ((MLPRegressor, SkRegressor) if target == "regression"
                    else (MLPClassifier, SkClassifier))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = ours(**kw, backend=backend, dtype="float64").fit(X, y)
        b = theirs(**kw).fit(X, y)
    assert max_diff(params_of(a), params_of(b)) < 1e-12
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-12)
    assert (a.n_iter_, a.t_, a.n_layers_, a.n_outputs_, a.out_activation_) == \
        (b.n_iter_, b.t_, b.n_layers_, b.n_outputs_, b.out_activation_)
    np.testing.assert_allclose(a.predict_proba(X) if target != "regression" else a.predict(X),
                               b.predict_proba(X) if target != "regression" else b.predict(X),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_equals_scikit_learns_but_for_where_epsilon_sits(data, backend):
    """PyTorch's Adam adds ε to √v̂, scikit-learn's to √v (ε/√(1 − β₂ᵗ) in PyTorch's
    terms): with ε → 0 they agree."""
    X, rng = data
    y = rng.randint(0, 3, 120)
    kw = dict(hidden_layer_sizes=(7, 5), alpha=0.0, batch_size=40, shuffle=False,
              max_iter=5, random_state=1, learning_rate_init=0.05, tol=0.0)
    gaps = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for eps in (1e-8, 1e-16):
            a = MLPClassifier(**kw, epsilon=eps, backend=backend, dtype="float64").fit(X, y)
            b = SkClassifier(**kw, epsilon=eps).fit(X, y)
            gaps.append(max_diff(params_of(a), params_of(b)))
    assert gaps[1] < 1e-10 < gaps[0]


def test_alpha_is_scikit_learns_penalty_on_the_weights_and_also_decays_biases(data):
    """One full-batch SGD step: the weights take scikit-learn's step exactly, L2 term
    alpha·W/n included; each bias also moves by −lr·(alpha/n)·b, which scikit-learn's does
    not; loss_ has scikit-learn's ½·alpha·‖W‖²/n."""
    X, rng = data
    y = rng.randint(0, 3, 120)
    lr, alpha, n = 0.1, 0.3, len(X)
    kw = dict(hidden_layer_sizes=(7,), solver="sgd", momentum=0.0, alpha=alpha,
              batch_size=n, shuffle=False, max_iter=1, random_state=1,
              learning_rate_init=lr, tol=0.0)
    assert weight_decay(alpha, n) == alpha / n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = MLPClassifier(**kw, backend="reference", dtype="float64").fit(X, y)
        b = SkClassifier(**kw).fit(X, y)
        start = SkClassifier(**{**kw, "learning_rate_init": 1e-300}).fit(X, y)
    assert max_diff(a.coefs_, b.coefs_) < 1e-15
    assert max_diff(a.intercepts_, b.intercepts_) > 1e-5           # the biases' decay...
    decayed = [bb - lr * alpha / n * b0 for bb, b0 in zip(b.intercepts_, start.intercepts_)]
    assert max_diff(a.intercepts_, decayed) < 1e-15                 # ...and only that
    assert a.loss_ == pytest.approx(b.loss_, rel=1e-13)


@pytest.mark.parametrize("schedule", ["invscaling", "adaptive"])
def test_learning_rate_schedules_equal_scikit_learns(data, schedule):
    """Without momentum (whose velocity scikit-learn keeps at the old rate) the schedules
    give scikit-learn's weights, final learning rate and epoch count."""
    X, rng = data
    y = rng.randint(0, 3, 120)
    kw = dict(hidden_layer_sizes=(7,), solver="sgd", momentum=0.0, alpha=0.0, batch_size=40,
              shuffle=False, max_iter=12, random_state=1, learning_rate_init=0.1,
              learning_rate=schedule, n_iter_no_change=1,
              tol=0.5 if schedule == "adaptive" else 1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = MLPClassifier(**kw, backend="reference", dtype="float64").fit(X, y)
        b = SkClassifier(**kw).fit(X, y)
    assert max_diff(params_of(a), params_of(b)) < 1e-13
    assert a.n_iter_ == b.n_iter_
    assert a._optimizer.lr == pytest.approx(b._optimizer.learning_rate, rel=1e-12)
    assert a._optimizer.lr < 0.1 / 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_early_stopping_equals_scikit_learns(data, backend):
    """The same held-out rows, validation scores, stopping epoch, and the best epoch's
    weights restored."""
    X, rng = data
    y = rng.randint(0, 3, 120)
    kw = dict(hidden_layer_sizes=(7,), solver="sgd", alpha=0.0, batch_size=27, shuffle=False,
              max_iter=40, random_state=1, learning_rate_init=0.1, early_stopping=True,
              n_iter_no_change=3)
    a = MLPClassifier(**kw, backend=backend, dtype="float64").fit(X, y)
    b = SkClassifier(**kw).fit(X, y)
    assert a.n_iter_ == b.n_iter_ < 40
    assert a.validation_scores_ == pytest.approx(b.validation_scores_)
    assert a.best_validation_score_ == b.best_validation_score_ == max(a.validation_scores_)
    assert a.best_loss_ is None and a.loss_curve_ == pytest.approx(b.loss_curve_)
    assert max_diff(params_of(a), params_of(b)) < 1e-12


def test_training_loss_convergence_and_convergence_warning(digits):
    X_train, _, y_train, _ = digits
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(3\) reached"):
        est = quick(MLPClassifier, max_iter=3).fit(X_train, y_train)
    assert est.n_iter_ == 3 and len(est.loss_curve_) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est = quick(MLPClassifier, max_iter=200, tol=10.0, n_iter_no_change=2).fit(X_train,
                                                                                    y_train)
    assert est.n_iter_ == 4     # the first improves on inf, then 3 > n_iter_no_change do not
    assert est.best_loss_ == min(est.loss_curve_)
    assert est.validation_scores_ is None and est.best_validation_score_ is None


# -- targets ---------------------------------------------------------------------------------
@pytest.mark.parametrize("labels", [np.array(["cat", "dog", "emu"]),
                                    np.array(["no", "yes"]),
                                    np.array([-3, 7, 11]),
                                    np.array(["a", "b", "c"], dtype=object),
                                    np.array([True, False])])
def test_any_label_type(digits, labels):
    X_train, X_test, y_train, y_test = digits
    codes = y_train % len(labels)
    y = labels[codes]
    est = quick(MLPClassifier, max_iter=60).fit(X_train, y)
    assert list(est.classes_) == sorted(labels.tolist())
    pred = est.predict(X_test)
    assert pred.dtype == est.classes_.dtype and set(pred.tolist()) <= set(labels.tolist())
    assert est.score(X_test, labels[y_test % len(labels)]) > 0.5
    proba = est.predict_proba(X_test)
    assert proba.shape == (len(X_test), len(labels))
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-12)
    np.testing.assert_array_equal(est.classes_[proba.argmax(axis=1)], pred)
    np.testing.assert_allclose(est.predict_log_proba(X_test), np.log(proba), rtol=1e-9,
                               atol=1e-12)
    assert est.out_activation_ == ("softmax" if len(labels) > 2 else "logistic")


@pytest.mark.parametrize("classes", [["dog", "cat", "emu", "ant"], ["yes", "no"], [7, -3]])
def test_targets_are_label_binarizers_encoding(classes):
    """A later partial_fit's labels (some classes absent) become what LabelBinarizer fitted
    on the classes makes of them: its column of each label's 1 (multiclass) or its 0/1
    column (binary)."""
    rng = np.random.default_rng(0)
    est = quick(MLPClassifier)
    X = rng.standard_normal((8, 3))
    est.partial_fit(X, np.array(classes)[rng.integers(0, len(classes), 8)], classes=classes)
    y = np.array(classes)[[1, 1, 0, 1, 0, 0, 1, 0]]             # two of the classes only
    want = LabelBinarizer().fit(classes).transform(y)
    _, targets, _ = est._validate_input(X, y, incremental=True, reset=False)
    np.testing.assert_array_equal(targets, want.argmax(axis=1) if len(classes) > 2 else want)


def test_predict_log_proba_is_finite_where_the_probability_underflows(data):
    X, rng = data
    for y in (rng.randint(0, 3, 120), rng.randint(0, 2, 120)):
        est = quick(MLPClassifier, max_iter=1).fit(X, y)
        est.coefs_ = [100 * W for W in est.coefs_]
        assert (est.predict_proba(X) == 0).any()
        log_p = est.predict_log_proba(X)
        assert np.isfinite(log_p).all() and log_p.min() < -700


def test_multilabel_trains_independent_sigmoids():
    X, Y = make_multilabel_classification(300, n_features=10, n_classes=4, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = quick(MLPClassifier, hidden_layer_sizes=(32,), max_iter=300).fit(X, Y)
        theirs = SkClassifier((32,), max_iter=300, random_state=0).fit(X, Y)
    assert est.out_activation_ == "logistic" and est.n_outputs_ == 4
    assert est.model_.out_features == 4
    pred, proba = est.predict(X), est.predict_proba(X)
    assert pred.shape == proba.shape == Y.shape and pred.dtype.kind == "i"
    np.testing.assert_array_equal(pred, (proba > 0.5).astype(int))
    assert (pred == Y).mean() > (theirs.predict(X) == Y).mean() - 0.02
    assert est.loss_ == pytest.approx(theirs.loss_, rel=0.05)
    assert not np.allclose(proba.sum(axis=1), 1)          # not a softmax


@pytest.mark.parametrize("shape", [(200,), (200, 1), (200, 3)])
def test_regressor_targets(shape):
    X, y = make_regression(200, 8, n_targets=shape[1] if len(shape) == 2 else 1, noise=1.0,
                           random_state=0)
    y = (y / y.std()).reshape(shape)
    est = quick(MLPRegressor, hidden_layer_sizes=(32,), max_iter=200,
                learning_rate_init=1e-2)
    if shape == (200, 1):
        with pytest.warns(DataConversionWarning):
            est.fit(X, y)
    else:
        est.fit(X, y)
    pred = est.predict(X)
    assert pred.shape == (shape if len(shape) == 2 and shape[1] > 1 else (200,))
    assert est.score(X, y) > 0.9
    assert est.n_outputs_ == (shape[1] if len(shape) == 2 else 1)
    assert est.out_activation_ == "identity"


def test_regressor_loss_curve_is_scikit_learns_mean_over_outputs(data):
    """fastnn's mse sums ½(ŷ − y)² over outputs; loss_ reports scikit-learn's mean."""
    X, rng = data
    Y = rng.randn(120, 4)
    est = quick(MLPRegressor, max_iter=1, alpha=0.0, learning_rate_init=1e-12,
                dtype="float64", shuffle=False).fit(X, Y)
    residual = est.predict(X) - Y
    assert est.loss_ == pytest.approx(0.5 * np.mean(residual ** 2), rel=1e-6)


# -- partial_fit, warm_start -----------------------------------------------------------------
def test_partial_fit_equals_scikit_learns_and_needs_classes_first(data):
    X, rng = data
    y = rng.randint(0, 3, 120)
    kw = dict(hidden_layer_sizes=(7,), solver="sgd", alpha=1e-3, batch_size=40,
              shuffle=False, random_state=1, learning_rate_init=0.05)
    a = MLPClassifier(**kw, backend="reference", dtype="float64")
    b = SkClassifier(**kw)
    with pytest.raises(ValueError, match="classes must be passed"):
        a.partial_fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)    # partial_fit never warns
        for i in range(3):
            a.partial_fit(X, y, classes=[0, 1, 2, 3] if i == 0 else None)
            b.partial_fit(X, y, classes=[0, 1, 2, 3] if i == 0 else None)
    assert list(a.classes_) == [0, 1, 2, 3] and a.n_outputs_ == 4
    assert (a.n_iter_, a.t_) == (b.n_iter_, b.t_) == (1, 360)
    # scikit-learn's but for the biases' decay (alpha > 0)
    assert a.loss_curve_ == pytest.approx(b.loss_curve_, rel=1e-5)
    assert max_diff(a.coefs_, b.coefs_) < 1e-4
    with pytest.raises(ValueError, match="not in `self.classes_`"):
        a.partial_fit(X, np.full(120, 9))
    with pytest.raises(ValueError, match="early_stopping"):
        MLPClassifier(early_stopping=True).partial_fit(X, y, classes=[0, 1, 2])


def test_partial_fit_regressor_continues_training(data):
    X, rng = data
    y = X @ rng.randn(6)
    est = quick(MLPRegressor, learning_rate_init=1e-2)
    losses = [est.partial_fit(X, y).loss_ for _ in range(20)]
    assert losses[-1] < 0.5 * losses[0] and est.t_ == 20 * len(X)


def test_warm_start_continues_from_the_fitted_weights(digits):
    X_train, _, y_train, _ = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = quick(MLPClassifier, max_iter=5, warm_start=True).fit(X_train, y_train)
        first = est.loss_curve_[-1]
        model = est.model_
        est.fit(X_train, y_train)
    assert est.model_ is model and est.n_iter_ == 5 and len(est.loss_curve_) == 10
    assert est.loss_curve_[5] < first
    with pytest.raises(ValueError, match="warm_start can only be used"):
        est.fit(X_train, y_train % 3)
    cold = clone(est).set_params(warm_start=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cold.fit(X_train, y_train)
        model = cold.model_
        cold.fit(X_train, y_train)
    assert cold.model_ is not model and len(cold.loss_curve_) == 5


# -- sample and class weights ----------------------------------------------------------------
@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_integer_sample_weights_equal_repeated_rows(data, cls):
    """One full batch: weight k ≡ the row k times (weight 0 ≡ the row left out), alpha's
    decay included (alpha/Σw, scikit-learn's, either way)."""
    X, rng = data
    y = rng.randint(0, 3, 120) if cls is MLPClassifier else rng.randn(120)
    w = rng.randint(0, 4, 120)
    kw = dict(hidden_layer_sizes=(8,), max_iter=20, alpha=0.1, tol=0.0, random_state=0,
              dtype="float64", backend=QUICK)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        weighted = cls(**kw).fit(X, y, sample_weight=w)
        repeated = cls(**kw).fit(X.repeat(w, axis=0), y.repeat(w))
    method = "predict_proba" if cls is MLPClassifier else "predict"
    np.testing.assert_allclose(getattr(weighted, method)(X), getattr(repeated, method)(X),
                               rtol=1e-9, atol=1e-12)
    assert weighted.loss_curve_ == pytest.approx(repeated.loss_curve_, rel=1e-9)


def test_class_weight_is_sample_weight_by_label(digits):
    X_train, _, y_train, _ = digits
    labels = np.array(["a", "b", "c"])[y_train % 3]
    kw = dict(max_iter=10, dtype="float64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for class_weight in ("balanced", {"a": 5.0, "c": 0.5}):
            a = quick(MLPClassifier, class_weight=class_weight, **kw).fit(X_train, labels)
            sw = compute_sample_weight(class_weight, labels)
            b = quick(MLPClassifier, **kw).fit(X_train, labels, sample_weight=sw)
            np.testing.assert_allclose(a.predict_proba(X_train), b.predict_proba(X_train))
        heavy = quick(MLPClassifier, class_weight={"a": 100.0}, **kw).fit(X_train, labels)
    assert (heavy.predict(X_train) == "a").mean() > 0.5
    X, Y = make_multilabel_classification(50, random_state=0)
    with pytest.raises(ValueError, match="multilabel"):
        quick(MLPClassifier, class_weight="balanced").fit(X, Y)
    with pytest.raises(ValueError, match="partial_fit"):
        quick(MLPClassifier, class_weight="balanced").partial_fit(X_train, labels,
                                                                  classes=["a", "b", "c"])


def test_sample_weight_errors(data):
    X, rng = data
    y = rng.randint(0, 2, 120)
    with pytest.raises(ValueError, match="Negative values"):
        quick(MLPClassifier).fit(X, y, sample_weight=-np.ones(120))
    with pytest.raises(ValueError):
        quick(MLPClassifier).fit(X, y, sample_weight=np.ones(7))


# -- fastnn's own parameters -----------------------------------------------------------------
def test_batch_norm_residual_and_dropout_build_the_network(digits):
    X_train, X_test, y_train, y_test = digits
    est = quick(MLPClassifier, hidden_layer_sizes=(32, 32, 16), batch_norm=True,
                residual=True, dropout=0.1, max_iter=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X_train, y_train)
    from fastnn import Dropout
    kinds = [type(l) for l in est.model_.layers]
    assert kinds == [Dense, BatchNorm, Dropout, Residual, Dense, BatchNorm, Dropout, Dense]
    assert [type(l) for l in est.model_.layers[3].block] == [Dense, BatchNorm, Dropout]
    assert [W.shape for W in est.coefs_] == [(64, 32), (32, 32), (32, 16), (16, 10)]
    assert est.n_layers_ == 5
    np.testing.assert_array_equal(est.predict_proba(X_test), est.predict_proba(X_test))
    assert est.score(X_test, y_test) > 0.9


def test_dropout_changes_training_and_is_seeded(digits):
    X_train, _, y_train, _ = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        runs = [quick(MLPClassifier, dropout=p, max_iter=3).fit(X_train, y_train).loss_curve_
                for p in (0.0, 0.5, 0.5)]
    assert runs[1] == runs[2] and runs[0] != runs[1]


@pytest.mark.parametrize("activation", HIDDEN_ACTIVATIONS)
def test_every_hidden_activation_trains(data, activation):
    X, rng = data
    y = rng.randint(0, 2, 120)
    est = quick(MLPClassifier, activation=activation, max_iter=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    expected = "sigmoid" if activation == "logistic" else activation
    assert est.model_.layers[0].activation == expected
    assert np.isfinite(est.predict_proba(X)).all()


def test_clip_norm_dtype_and_backend_reach_the_model(data):
    X, rng = data
    y = rng.randint(0, 2, 120)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = quick(MLPClassifier, dtype="float64", backend="reference", max_iter=2,
                    solver="sgd", learning_rate_init=10.0, clip_norm=1e-3,
                    momentum=0.0, alpha=0.0).fit(X, y)
        free = clone(est).set_params(clip_norm=None).fit(X, y)
    assert est.model_.backend == "reference" and est.coefs_[0].dtype == np.float64
    start = quick(MLPClassifier, dtype="float64", backend="reference", max_iter=1,
                  learning_rate_init=1e-300).fit(X, y)
    moved = np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(params_of(est), params_of(start))))
    assert moved <= 2 * 10.0 * 1e-3 * 1.0001                    # 2 steps of at most lr·C
    assert max_diff(params_of(free), params_of(start)) > 1e-2


@pytest.mark.parametrize("solver", ["adamw", "rmsprop"])
def test_fastnn_solvers(digits, solver):
    X_train, X_test, y_train, y_test = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = quick(MLPClassifier, solver=solver, hidden_layer_sizes=(64,), max_iter=60,
                    alpha=1e-2).fit(X_train, y_train)
    assert type(est._optimizer).__name__ == {"adamw": "AdamW", "rmsprop": "RMSprop"}[solver]
    assert est._optimizer.weight_decay == pytest.approx(1e-2 / 200)
    assert est.score(X_test, y_test) > 0.9


# -- fitted attributes, bad input --------------------------------------------------------------
def test_coefs_are_views_in_scikit_learns_layout(data):
    X, rng = data
    y = rng.randint(0, 3, 120)
    est = quick(MLPClassifier, hidden_layer_sizes=(5, 4), max_iter=1).fit(X, y)
    assert [W.shape for W in est.coefs_] == [(6, 5), (5, 4), (4, 3)]
    assert [b.shape for b in est.intercepts_] == [(5,), (4,), (3,)]
    est.coefs_ = [np.zeros_like(W) for W in est.coefs_]
    est.intercepts_ = [np.zeros(5), np.zeros(4), np.array([0.0, 3.0, 0.0])]
    assert (est.predict(X) == 1).all()
    with pytest.raises(ValueError, match=r"coefs_\[1\] has shape"):
        est.coefs_ = [np.zeros((6, 5)), np.zeros((4, 5)), np.zeros((4, 3))]
    with pytest.raises(NotFittedError):
        MLPClassifier().predict(X)
    assert not hasattr(MLPClassifier(), "coefs_")


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_float32_predictions_do_not_depend_on_row_order_or_batch(data, cls):
    """At float32's precision (scikit-learn's own check wants 1e-7, float64's, and
    test_sklearn_checks.py runs it in float64)."""
    X, rng = data
    y = rng.randint(0, 3, 120) if cls is MLPClassifier else rng.randn(120)
    est = quick(cls, hidden_layer_sizes=(32, 32), batch_norm=True, residual=True,
                max_iter=20).fit(X, y)
    method = getattr(est, "predict_proba" if cls is MLPClassifier else "predict")
    order = rng.permutation(120)
    np.testing.assert_allclose(method(X[order]), method(X)[order], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(method(X[:7]), method(X)[:7], rtol=1e-5, atol=1e-6)


def test_bad_input_follows_scikit_learns_conventions(data):
    X, rng = data
    y = rng.randint(0, 2, 120)
    from scipy import sparse
    with pytest.raises(TypeError, match="dense data is required"):
        quick(MLPClassifier).fit(sparse.csr_matrix(X), y)
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        quick(MLPClassifier).fit(bad, y)
    est = quick(MLPClassifier, max_iter=1).fit(X, y)
    with pytest.raises(ValueError, match="6 features"):
        est.predict(X[:, :4])
    with pytest.raises(ValueError, match="non-finite parameter weights"):
        quick(MLPRegressor, solver="sgd", learning_rate_init=1e3).fit(X * 1e3, y * 1e6)
    with pytest.warns(UserWarning, match="clipped"):
        quick(MLPClassifier, batch_size=500, max_iter=1).fit(X, y)
    with pytest.raises(ValueError, match="validation set is too small"):
        quick(MLPRegressor, early_stopping=True).fit(X[:8], y[:8])


def test_verbose_prints_scikit_learns_lines(data, capsys):
    X, rng = data
    quick(MLPClassifier, max_iter=200, verbose=True, tol=10.0, n_iter_no_change=1).fit(
        X, rng.randint(0, 2, 120))
    out = capsys.readouterr().out
    assert "Iteration 1, loss = " in out and "Stopping." in out


def test_pandas_feature_names():
    import pandas as pd
    X, y = make_regression(60, 3, random_state=0)
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    est = quick(MLPRegressor, max_iter=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(frame, pd.Series(y))
    assert list(est.feature_names_in_) == ["a", "b", "c"] and est.n_features_in_ == 3
    with pytest.warns(UserWarning, match="feature names"):
        est.predict(X)


# -- pickling, cloning, model selection, threads ---------------------------------------------
def test_pickle_clone_and_joblib_round_trip(data, tmp_path):
    X, rng = data
    y = rng.randint(0, 3, 120)
    est = quick(MLPClassifier, max_iter=1, solver="adam")
    est.partial_fit(X, y, classes=[0, 1, 2])
    for copy in (pickle.loads(pickle.dumps(est)),
                 joblib.load(_dumped(est, tmp_path / "est.joblib"))):
        np.testing.assert_array_equal(copy.predict_proba(X), est.predict_proba(X))
        assert copy.loss_curve_ == est.loss_curve_ and copy.t_ == est.t_
        # Adam's moments and step count travel too: the next step is the same
        twin = pickle.loads(pickle.dumps(est))
        copy.partial_fit(X, y)
        twin.partial_fit(X, y)
        np.testing.assert_array_equal(copy.predict_proba(X), twin.predict_proba(X))
    assert copy._optimizer._state_for is copy.model_.parameters()
    fresh = clone(est)
    assert not hasattr(fresh, "model_") and fresh.get_params() == est.get_params()
    size = len(pickle.dumps(est))
    assert size < 4 * est.model_.parameters().nbytes + 20_000    # weights, Adam's m and v


def _dumped(est, path):
    joblib.dump(est, path)
    return path


def test_pipeline_and_grid_search_across_processes(digits):
    X_train, X_test, y_train, y_test = digits
    pipe = make_pipeline(StandardScaler(), MLPClassifier(max_iter=40, random_state=0,
                                                         backend=QUICK))
    search = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(16,), (64,)],
                                 "mlpclassifier__alpha": [1e-4, 1e-2]}, cv=2, n_jobs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X_train, y_train)
    assert search.best_params_["mlpclassifier__hidden_layer_sizes"] == (64,)
    assert search.score(X_test, y_test) > 0.9
    assert len(search.cv_results_["mean_test_score"]) == 4


def _threads_in_worker():
    """A joblib worker's fastnn thread pools, after a fit (Numba's and OpenMP's)."""
    from threadpoolctl import threadpool_info

    import fastnn
    X = np.random.RandomState(0).randn(64, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        MLPClassifier((8,), max_iter=2, backend=QUICK).fit(X, X[:, 0] > 0)
    openmp = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"]
    return fastnn.get_num_threads(), openmp


def test_fastnn_threads_in_a_joblib_worker_default_to_its_share():
    """GridSearchCV(n_jobs=2) on 2 cores: each worker's fastnn runs on 1 thread (joblib's
    worker environment), not 2, so two fits never oversubscribe the cores."""
    import os

    from joblib import Parallel, cpu_count, delayed
    share = max(cpu_count() // 2, 1)
    expected = {int(os.environ.get(v, share)) for v in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS")}
    results = Parallel(n_jobs=2)(delayed(_threads_in_worker)() for _ in range(2))
    for numba_threads, openmp in results:
        assert numba_threads in expected
        assert openmp and set(openmp) <= expected


def test_score_uses_validate_data_and_repr_is_scikit_learns():
    est = MLPRegressor(hidden_layer_sizes=(3,), dtype="float64")
    assert repr(est) == "MLPRegressor(dtype='float64', hidden_layer_sizes=(3,))"
    buffer = io.StringIO()
    print(MLPClassifier(batch_norm=True), file=buffer)
    assert "batch_norm=True" in buffer.getvalue()
