"""ONNX export of fastnn.sklearn's estimators (``to_onnx``, which calls export_classifier
and export_model), against predict and predict_proba (float32, rtol 1e-5)."""
import warnings

import numpy as np
import onnxruntime as ort
import pytest

from fastnn.sklearn import MLPClassifier, MLPRegressor

RNG = np.random.default_rng(0)
X = RNG.standard_normal((400, 5)).astype(np.float32)
TARGETS = {
    "binary strings": np.where(X[:, 0] + X[:, 1] > 0, "yes", "no"),
    "multiclass strings": np.array(["ant", "bee", "cow"])[(X[:, 0] > 0).astype(int)
                                                          + (X[:, 1] > 0)],
    "negative integers": np.array([-5, 3, 11])[(X[:, 2] > 0).astype(int) + (X[:, 3] > 0)],
    "multilabel": (X[:, :3] > 0).astype(int),
}


def fitted(estimator, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                  # ConvergenceWarning at max_iter
        return estimator.fit(X, y)


def run(path, rows):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": rows})


@pytest.mark.parametrize("kind", list(TARGETS))
def test_classifier_matches_predict_and_predict_proba(kind, tmp_path):
    y = TARGETS[kind]
    est = fitted(MLPClassifier(hidden_layer_sizes=(16,), max_iter=30, backend="reference",
                               random_state=0), y)
    path = tmp_path / "clf.onnx"
    est.to_onnx(path)
    for rows in (X, X[7:8]):
        proba, label = run(path, rows)
        np.testing.assert_allclose(proba, est.predict_proba(rows), rtol=1e-5, atol=1e-6)
        assert label.tolist() == est.predict(rows).tolist()
    assert len(np.unique(run(path, X)[1], axis=0)) > 1        # not one constant answer


@pytest.mark.parametrize("targets", [1, 3])
def test_regressor_matches_predict(targets, tmp_path):
    y = X[:, :targets] @ np.arange(1, targets + 1) if targets == 1 else X[:, :targets] * 2
    est = fitted(MLPRegressor(hidden_layer_sizes=(16,), max_iter=20, backend="reference",
                              random_state=0), y)
    est.to_onnx(tmp_path / "reg.onnx")
    got = run(tmp_path / "reg.onnx", X)[0]
    want = est.predict(X).reshape(len(X), -1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_to_onnx_needs_a_fitted_estimator(tmp_path):
    from sklearn.exceptions import NotFittedError
    with pytest.raises(NotFittedError):
        MLPClassifier().to_onnx(tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
