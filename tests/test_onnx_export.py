"""ONNX export: onnx's full check passes and onnxruntime reproduces predict.

Parity: float32, rtol 1e-5, with an absolute floor of 1e-6 × the output's scale (max(1, max
|output|)) for the entries near 0, where a relative error means nothing (GELU of a very
negative z). Every model runs through one file at batch 1000 and at batch 1.
"""
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from scipy.special import expit, softmax

import fastnn
from fastnn.kernels import ACTIVATIONS
from fastnn.layers import Layer
from fastnn.onnx_export import export_classifier, export_model

RNG = np.random.default_rng(0)
X = (2 * RNG.standard_normal((1000, 6))).astype(np.float32)


def run(path, feeds, outputs=None):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(outputs, feeds)


def checked(path):
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    return model


def ops(model):
    return [node.op_type for node in model.graph.node]


def assert_parity(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-5,
                               atol=1e-6 * max(1.0, float(np.abs(want).max())))


def assert_model_parity(model, path, opset=17):
    """Export, check, and compare onnxruntime with predict at batch 1000 and batch 1."""
    model.to_onnx(path, opset=opset)
    graph = checked(path)
    want = model.predict(X)
    assert_parity(run(path, {"input": X})[0], want)
    for row in (0, 17, 999):
        assert_parity(run(path, {"input": X[row:row + 1]})[0], want[row:row + 1])
    return graph


def seq(layers, seed=0):
    return fastnn.Sequential(layers, backend="reference", seed=seed)


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_matches_predict(activation, opset, tmp_path):
    model = seq([fastnn.Dense(6, 16, activation), fastnn.Dense(16, 3, activation)])
    graph = assert_model_parity(model, tmp_path / "m.onnx", opset)
    assert ops(graph).count("Gemm") == 2
    if activation == "gelu":
        assert ("Gelu" in ops(graph)) == (opset >= 20) and ("Erf" in ops(graph)) == (opset < 20)
    if activation == "gelu_tanh":
        assert ("Gelu" in ops(graph)) == (opset >= 20)


def test_batchnorm_in_inference_form(tmp_path):
    bn = fastnn.BatchNorm(16)
    model = seq([fastnn.Dense(6, 16, "relu"), bn, fastnn.Dense(16, 2)])
    bn.gamma[...] = RNG.uniform(0.5, 2, 16)
    bn.beta[...] = RNG.normal(0, 1, 16)
    bn.running_mean[...] = RNG.normal(0, 1, 16)
    bn.running_var[...] = RNG.uniform(0.1, 4, 16)
    graph = assert_model_parity(model, tmp_path / "bn.onnx")
    assert "BatchNormalization" in ops(graph)


def test_batchnorm_statistics_from_training(tmp_path):
    model = seq([fastnn.Dense(6, 16, "tanh"), fastnn.BatchNorm(16), fastnn.Dense(16, 3)])
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    model.fit(X, y, loss="cross_entropy", optimizer=fastnn.Adam(1e-2), epochs=2, verbose=0)
    assert_model_parity(model, tmp_path / "bn.onnx")


def test_residual_as_add(tmp_path):
    model = seq([fastnn.Dense(6, 16, "relu"),
                 fastnn.Residual([fastnn.Dense(16, 16, "elu"), fastnn.BatchNorm(16),
                                  fastnn.Dense(16, 16)]),
                 fastnn.Residual(fastnn.Dense(16, 16, "tanh")), fastnn.Dense(16, 4)])
    graph = assert_model_parity(model, tmp_path / "res.onnx")
    assert ops(graph).count("Add") == 2


def test_dropout_is_left_out(tmp_path):
    model = seq([fastnn.Dense(6, 16, "relu"), fastnn.Dropout(0.4), fastnn.Dense(16, 3)])
    y = (X[:, 0] > 0).astype(int)
    model.fit(X, y, loss="cross_entropy", optimizer=fastnn.Adam(1e-2), epochs=1, verbose=0)
    graph = assert_model_parity(model, tmp_path / "drop.onnx")
    assert "Dropout" not in ops(graph)


def test_standardize_as_sub_and_div(tmp_path):
    Xs = X * np.array([1, 10, 100, 0.1, 1, 1], np.float32) + 50
    Xs[:, 4] = 3.0                                                 # a constant feature
    model = seq([fastnn.Standardize(6).adapt(Xs), fastnn.Dense(6, 8, "silu"),
                 fastnn.Dense(8, 2)])
    model.to_onnx(tmp_path / "std.onnx")
    graph = checked(tmp_path / "std.onnx")
    assert ops(graph)[:2] == ["Sub", "Div"]
    assert_parity(run(tmp_path / "std.onnx", {"input": Xs})[0], model.predict(Xs))


def test_regressor_with_three_outputs(tmp_path):
    model = seq([fastnn.Dense(6, 32, "relu"), fastnn.Dense(32, 32, "softplus"),
                 fastnn.Dense(32, 3)])
    Y = np.stack([X[:, 0] * 2, X[:, 1] - X[:, 2], np.sin(X[:, 3])], axis=1)
    model.fit(X, Y, loss="mse", optimizer=fastnn.Adam(1e-2), epochs=2, verbose=0)
    graph = assert_model_parity(model, tmp_path / "reg.onnx")
    assert [o.name for o in graph.graph.output] == ["output"]
    assert graph.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 3


def test_a_float64_model_exports_in_float32(tmp_path):
    model = fastnn.Sequential([fastnn.Dense(6, 16, "tanh"), fastnn.Dense(16, 2)],
                              backend="reference", seed=0, dtype="float64")
    model.to_onnx(tmp_path / "m.onnx")
    got = run(tmp_path / "m.onnx", {"input": X})[0]
    assert got.dtype == np.float32
    assert_parity(got, model.predict(X))


def test_ir_version_is_the_oldest_that_carries_the_opset(tmp_path):
    model = seq([fastnn.Dense(6, 2)])
    for opset, ir in ((17, 8), (20, 9)):
        model.to_onnx(tmp_path / "m.onnx", opset=opset)
        graph = onnx.load(str(tmp_path / "m.onnx"))
        assert graph.ir_version == ir
        assert [(o.domain, o.version) for o in graph.opset_import] == [("", opset)]


# -- classifiers ------------------------------------------------------------------------------
def classify(model, classes, path, multilabel=False):
    export_classifier(model, classes, path, multilabel=multilabel)
    graph = checked(path)
    assert [o.name for o in graph.graph.output] == ["probabilities", "label"]
    assert "ZipMap" not in ops(graph)
    big = dict(zip(["probabilities", "label"], run(path, {"input": X})))
    one = dict(zip(["probabilities", "label"], run(path, {"input": X[5:6]})))
    return big, one


def test_string_label_classifier(tmp_path):
    model = seq([fastnn.Dense(6, 16, "gelu"), fastnn.Dense(16, 3)])       # logits
    classes = np.array(["cat", "dog", "emu"])
    got, one = classify(model, classes, tmp_path / "c.onnx")
    proba = softmax(model.predict(X).astype(np.float64), axis=1)
    assert_parity(got["probabilities"], proba)
    assert got["label"].tolist() == classes[proba.argmax(axis=1)].tolist()
    assert one["label"].tolist() == [classes[proba[5].argmax()]]
    assert len(set(got["label"].tolist())) == 3                  # every branch is exercised


def test_softmax_output_classifier_with_integer_labels(tmp_path):
    model = seq([fastnn.Dense(6, 16, "selu"), fastnn.Dense(16, 4, "softmax")])
    classes = np.array([-3, 0, 7, 42])
    got, _ = classify(model, classes, tmp_path / "c.onnx")
    proba = model.predict(X)
    assert_parity(got["probabilities"], proba)
    assert got["label"].dtype == np.int64
    np.testing.assert_array_equal(got["label"], classes[proba.argmax(axis=1)])


def test_binary_classifier_with_one_logit(tmp_path):
    model = seq([fastnn.Dense(6, 8, "tanh"), fastnn.Dense(8, 1)])
    got, one = classify(model, ["no", "yes"], tmp_path / "b.onnx")
    p = expit(model.predict(X)[:, 0].astype(np.float64))
    assert_parity(got["probabilities"], np.stack([1 - p, p], axis=1))
    expected = np.where(p > 0.5, "yes", "no")
    assert got["label"].tolist() == expected.tolist() and len(set(expected)) == 2


def test_multilabel_classifier(tmp_path):
    model = seq([fastnn.Dense(6, 16, "relu"), fastnn.Dense(16, 4, "sigmoid")])
    got, one = classify(model, None, tmp_path / "ml.onnx", multilabel=True)
    proba = model.predict(X)
    assert_parity(got["probabilities"], proba)
    np.testing.assert_array_equal(got["label"], (proba > 0.5).astype(np.int64))
    np.testing.assert_array_equal(one["label"], (proba[5:6] > 0.5).astype(np.int64))
    assert 0 < got["label"].mean() < 1


def test_classifier_export_refuses_what_it_cannot_express(tmp_path):
    with pytest.raises(ValueError, match="last activation must be"):
        export_classifier(seq([fastnn.Dense(6, 3, "relu")]), [0, 1, 2], tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="classes must list the 3 labels"):
        export_classifier(seq([fastnn.Dense(6, 3)]), [0, 1], tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


# -- errors -----------------------------------------------------------------------------------
class Twice(Layer):
    """A layer with no ONNX form."""
    in_features = out_features = 6

    def _workspace(self, batch, dtype):
        return {}

    def _forward(self, k, X, ws, training, logits=False):
        return 2 * X

    def get_config(self):
        return {"type": "Twice"}


def test_errors_name_the_problem_and_write_nothing(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match="no ONNX form for 'Twice'"):
        export_model(seq([Twice(), fastnn.Dense(6, 2)]), path)
    with pytest.raises(ValueError, match="opset must be an integer from 13"):
        seq([fastnn.Dense(6, 2)]).to_onnx(path, opset=9)
    monkeypatch.setitem(sys.modules, "onnx", None)             # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'fastnn\[onnx\]'"):
        seq([fastnn.Dense(6, 2)]).to_onnx(path)
    assert not path.exists()
