"""Every CPU backend's fused forward pass (``make_predictor``, executing fastnn.plan's inference
plan) computes what the layer-by-layer forward pass and the NumPy reference do, for predict and
evaluate: Dense with every activation, BatchNorm with its running statistics, Residual (also
from the input), Dropout (the identity), Standardize; float32 and float64; one chunk and many,
on one thread and on several.

(numba_cuda's device forward pass runs the same plan under the CUDA simulator in
tests/numba_cuda_checks.py.)
"""
import numpy as np
import pytest

import fastnn
from conftest import layout, tolerance
from fastnn import BatchNorm, Dense, Dropout, Residual, Sequential, Standardize
from fastnn import plan as plan_module
from fastnn.backends import available_backends
from fastnn.kernels import ACTIVATIONS, BATCHNORM, DROPOUT, IDENTITY, KIND, PREDICT_TEAM_WORK
from fastnn.kernels import ACT as ACT_COLUMN
from fastnn.kernels import predict_split
from fastnn.layers import Layer, from_config

FUSED = [name for name in ("numba_cpu", "cython") if available_backends()[name].usable]
HIDDEN = sorted(a for a in ACTIVATIONS if a != "softmax")


def network(kind: str, rng):
    """Layers of one network kind (new layer objects on every call), 9 inputs."""
    if kind == "activations":                  # every hidden activation, a softmax output
        layers, width = [], 9
        for act in HIDDEN:
            layers.append(Dense(width, 11, act))
            width = 11
        return layers + [Dense(width, 4, "softmax")]
    if kind == "everything":
        scale = Standardize(9)
        scale.adapt(rng.standard_normal((50, 9)) * 3 + 1)
        return [scale, Dense(9, 24, "gelu"), Dropout(0.3), BatchNorm(24),
                Residual([Dense(24, 24, "silu"), BatchNorm(24), Dropout(0.2),
                          Residual(Dense(24, 24, "tanh"))]),
                Dense(24, 3, "sigmoid")]
    if kind == "input_skip":                   # the residual's skip reads the input itself
        return [Residual([Dense(9, 9, "relu"), Dense(9, 9, "identity")]), Dense(9, 2)]
    return [Dense(9, 512, "relu"), Dense(512, 512, "tanh"), Dense(512, 3, "softmax")]   # big


def trained(kind: str, backend: str, dtype: str):
    """A model of ``kind`` trained one epoch (so BatchNorm's running statistics are its
    own) on ``backend``, and data X."""
    rng = np.random.default_rng(7)
    model = Sequential(network(kind, rng), backend=backend, seed=5, dtype=dtype)
    X = rng.standard_normal((300, 9))
    y = rng.standard_normal((300, model.out_features))
    model.fit(X, y, loss="mse", epochs=1, batch_size=32, verbose=0)
    return model, X


def same_weights(model, backend: str):
    """A copy of ``model`` (weights, statistics) on another backend."""
    twin = Sequential([from_config(c) for c in model.get_config()["layers"]], backend=backend,
                      seed=5, dtype=model.dtype.name)
    twin.parameters()[...] = model.parameters()
    twin._state[...] = model._state
    return twin


def forbid_layer_path(monkeypatch):
    """Make the layer-by-layer forward pass fail, so a test sees the fused one run."""
    def refuse(*args, **kwargs):
        raise AssertionError("the layer-by-layer forward pass ran")
    monkeypatch.setattr(Sequential, "_forward", refuse)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["activations", "everything", "input_skip", "big"])
@pytest.mark.parametrize("backend", FUSED)
def test_fused_predict_equals_layer_path_and_reference(backend, kind, dtype, monkeypatch):
    model, X = trained(kind, backend, dtype)
    ref = same_weights(model, "reference")
    model.fuse = False
    layer_path = {bs: model.predict(X, batch_size=bs) for bs in (1, 7, 1024)}
    model.fuse = True
    want = ref.predict(X)
    tol = tolerance(dtype, 512)                          # the widest sum: 512 terms
    forbid_layer_path(monkeypatch)
    for bs in (1, 7, 1024):
        got = model.predict(X, batch_size=bs)
        assert got.dtype == model.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, **tol)
        np.testing.assert_allclose(got, layer_path[bs], **tol)
    np.testing.assert_allclose(model.predict(X[:1]), want[:1], **tol)            # one row


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("kind", ["C", "F", "strided"])
def test_fused_predict_takes_any_layout_and_float64_for_float32(backend, kind, monkeypatch):
    model, X = trained("everything", backend, "float32")
    want = model.predict(np.ascontiguousarray(X, np.float32))
    forbid_layer_path(monkeypatch)
    np.testing.assert_array_equal(model.predict(layout(X, kind)), want)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend", FUSED)
def test_fused_predict_splits_big_calls_over_threads(backend, dtype, threads):
    """Enough rows that the call runs on every thread, in chunks of at most batch_size rows:
    the same output as the reference whatever the threads and chunks."""
    model, _ = trained("big", backend, dtype)
    work = plan_module.build_inference(model, 256, logits=False).work_per_row
    rows = 4 * 256 + 76                                  # whole chunks of 256 rows, and a part
    assert rows * work >= PREDICT_TEAM_WORK
    X = np.random.default_rng(1).standard_normal((rows, 9))
    assert predict_split(rows, 256, work, threads) == (256, threads)
    want = same_weights(model, "reference").predict(X)
    before = fastnn.get_num_threads()
    fastnn.set_num_threads(threads)
    try:
        got = model.predict(X, batch_size=256)
    finally:
        fastnn.set_num_threads(before)
    np.testing.assert_allclose(got, want, **tolerance(dtype, 512))


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("backend", FUSED)
def test_fused_evaluate_equals_layer_path(backend, loss, monkeypatch):
    """evaluate's forward pass is fused too, on logits for the cross-entropy (the last
    layer's softmax left to the loss)."""
    rng = np.random.default_rng(2)
    last = "softmax" if loss == "cross_entropy" else "identity"
    model = Sequential([Dense(9, 30, "relu"), BatchNorm(30), Dropout(0.4), Dense(30, 4, last)],
                       backend=backend, seed=1, dtype="float64")
    X = rng.standard_normal((200, 9))
    y = rng.integers(0, 4, 200) if loss == "cross_entropy" else rng.standard_normal((200, 4))
    model.fit(X, y, loss=loss, epochs=1, batch_size=16, verbose=0)
    model.fuse = False
    want = model.evaluate(X, y, loss, batch_size=64)
    model.fuse = True
    forbid_layer_path(monkeypatch)
    got = model.evaluate(X, y, loss, batch_size=64)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12)


def test_inference_plan_drops_dropout_and_keeps_no_training_buffers():
    rng = np.random.default_rng(0)
    model = Sequential(network("everything", rng) + [Dropout(0.5)], backend="reference")
    plan = plan_module.build_inference(model, 32, logits=False)
    kinds = plan.ops[:, KIND]
    assert DROPOUT not in kinds and (kinds == BATCHNORM).sum() == 2
    assert plan.out == plan.ops[-1, 2] and plan.rows == 32
    assert plan.scratch_size == 32 * 24 + 24             # BatchNorm(24)'s x̂ and 1/σ, ≥ GELU's z
    train_plan = plan_module.build(model, fastnn.losses.get("mse"), 32)
    assert plan.act_size < train_plan.act_size            # no Dropout blocks, no gathered batch
    assert plan.ops[-1, ACT_COLUMN] == ACTIVATIONS["sigmoid"]
    # with logits the last layer's activation goes, as in _forward: not past a final Dropout
    logits = plan_module.build_inference(model, 32, logits=True)
    assert logits.ops[-1, ACT_COLUMN] == ACTIVATIONS["sigmoid"]
    plain = Sequential([Dense(3, 4, "relu"), Dense(4, 2, "softmax")], backend="reference")
    plain_plan = plan_module.build_inference(plain, 8, logits=True)
    assert plain_plan.ops[-1, ACT_COLUMN] == IDENTITY and plain_plan.scratch_size == 0


class Doubling(Layer):
    """y = 2x: a layer kind with no op form (it runs layer by layer)."""

    def __init__(self, n):
        super().__init__()
        self.in_features = self.out_features = n

    def _forward(self, k, X, ws, training, logits=False):
        return 2 * X


@pytest.mark.parametrize("backend", FUSED)
def test_a_layer_without_op_form_predicts_layer_by_layer(backend):
    model = Sequential([Dense(3, 3, "tanh"), Doubling(3)], backend=backend, dtype="float64")
    assert plan_module.build_inference(model, 4, False) is None
    assert model._predictor(4, logits=False) is None
    X = np.random.default_rng(0).standard_normal((5, 3))
    W, b = model.layers[0]._W, model.layers[0]._b
    np.testing.assert_allclose(model.predict(X), 2 * np.tanh(X @ W + b), rtol=1e-12)


@pytest.mark.parametrize("n, rows, work, threads, want", [
    (0, 1024, 10, 2, (8, 1)),                             # nothing to do: one (empty) chunk
    (1, 1024, 10, 2, (8, 1)),
    (100, 1024, 10, 2, (100, 1)),                         # too little work: one thread
    (4096, 1024, PREDICT_TEAM_WORK // 4096, 2, (1024, 2)),  # just enough: both threads
    (4096, 1024, PREDICT_TEAM_WORK // 4096 - 1, 2, (1024, 1)),
    (4096, 256, PREDICT_TEAM_WORK, 2, (256, 2)),          # chunks of at most rows
    (9, 1024, PREDICT_TEAM_WORK, 4, (8, 2)),              # at least 8 rows a chunk
    (3, 1024, PREDICT_TEAM_WORK, 4, (8, 1)),
])
def test_predict_split(n, rows, work, threads, want):
    assert predict_split(n, rows, work, threads) == want


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend", FUSED)
def test_fused_predict_reports_nan_and_inf_wherever_they_are(backend, dtype):
    """The fused pass checks each chunk as it reads it (predict validates nothing else first):
    a NaN or Inf in any chunk, on one thread or several, is reported as validation reports it,
    and so is a float64 value beyond float32's range."""
    model, _ = trained("big", backend, dtype)
    X = np.random.default_rng(3).standard_normal((1100, 9))
    for where, value in (((0, 0), np.nan), ((1099, 8), np.inf), ((600, 3), -np.inf)):
        bad = X.copy()
        bad[where] = value
        with pytest.raises(ValueError, match=rf"X contains 1 NaN or Inf value\(s\), the first "
                                             rf"at index \({where[0]}, {where[1]}\)"):
            model.predict(bad, batch_size=256)
    huge = X.copy()
    huge[5, 2] = 1e39
    if dtype == "float32":
        with pytest.raises(ValueError, match=r"beyond float32's range .* index \(5, 2\)"):
            model.predict(huge)
    else:
        assert np.isfinite(model.predict(huge)[:5]).all()
