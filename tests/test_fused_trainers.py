"""Every backend's fused trainer executes the shared training plan (fastnn.plan) and computes
what the layer-by-layer path and the NumPy reference do: Dense, BatchNorm, Residual (nested)
and Dropout layers, every activation, loss and optimizer, row and class weights, float32 and
float64, one thread and several.

(numba_cuda runs the same plan under the CUDA simulator in tests/numba_cuda_checks.py.)
"""
import numpy as np
import pytest

import fastnn
from conftest import check_trainer_gradients, tolerance
from fastnn import SGD, Adam, AdamW, BatchNorm, Dense, Dropout, Residual, RMSprop, Sequential
from fastnn.backends import available_backends

FUSED = [name for name in ("numba_cpu", "cython") if available_backends()[name].usable]
OPTIMIZERS = {"sgd": lambda: SGD(0.05), "momentum": lambda: SGD(0.05, momentum=0.9),
              "adam": lambda: Adam(1e-2),
              "nesterov_wd": lambda: SGD(0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
              "adam_wd": lambda: Adam(1e-2, weight_decay=0.01),
              "adamw": lambda: AdamW(1e-2, weight_decay=0.05),
              "rmsprop_momentum_wd": lambda: RMSprop(1e-3, momentum=0.9, weight_decay=0.01)}
#: optimizers that divide by a running √(mean square): see the float32 allowance below
ADAPTIVE = ("adam", "adam_wd", "adamw", "rmsprop_momentum_wd")
LAST = {"mse": "tanh", "cross_entropy": "identity", "binary_cross_entropy": "sigmoid"}


#: kind -> minibatch size; "wide" has enough work per batch to split it into row chunks
#: trained by separate threads, "big" layers big enough for threaded BLAS instead (see
#: kernels/numba_cpu/_split.py), the others run on one thread
BATCH = {"mlp": 16, "batchnorm_residual": 16, "wide": 64, "big": 64}


def network(kind: str, last: str):
    if kind == "mlp":
        return [Dense(12, 24, "relu"), Dense(24, 16, "sigmoid"), Dense(16, 3, last)]
    if kind == "big":
        return [Dense(12, 640, "relu"), Dense(640, 640, "tanh"), Dense(640, 3, last)]
    if kind == "wide":
        return [Dense(12, 384, "relu"), BatchNorm(384), Residual(Dense(384, 384, "tanh")),
                Dense(384, 3, last)]
    return [Dense(12, 16, "leaky_relu"), BatchNorm(16),
            Residual([Dense(16, 16, "tanh"), BatchNorm(16), Dense(16, 16, "relu")]),
            Residual(Dense(16, 16, "softmax")), Dense(16, 3, last)]


def targets(loss: str, rng, n: int):
    if loss == "cross_entropy":
        return rng.integers(0, 3, n)
    if loss == "binary_cross_entropy":
        return rng.integers(0, 2, (n, 3)).astype(float)
    return rng.standard_normal((n, 3))


def train(backend, fuse, kind, loss, optimizer, dtype, n=300):
    """300 rows in minibatches (20 steps for batch 16; the last batch short) from seed 3;
    the trained model and its history."""
    batch = BATCH[kind]
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((n, 12)), targets(loss, rng, n)
    model = Sequential(network(kind, LAST[loss]), backend=backend, seed=3, dtype=dtype)
    model.fuse = fuse
    history = model.fit(X, y, loss=loss, optimizer=OPTIMIZERS[optimizer](), epochs=1,
                        batch_size=batch, verbose=0)
    return model, history


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("loss", sorted(LAST))
@pytest.mark.parametrize("kind", sorted(BATCH))
@pytest.mark.parametrize("backend", FUSED)
def test_fused_epoch_equals_layer_path_and_reference(backend, kind, loss, optimizer, dtype):
    ref, ref_hist = train("reference", False, kind, loss, optimizer, dtype)
    tol = tolerance(dtype, BATCH[kind])
    for fuse in (True, False):
        model, hist = train(backend, fuse, kind, loss, optimizer, dtype)
        assert (model._make_trainer(fastnn.losses.get(loss), SGD(), BATCH[kind])
                is not None) == fuse
        weights, want = model.parameters(), ref.parameters()
        if optimizer in ADAPTIVE and dtype == "float32":
            # Adam divides by √v̂: where a gradient is ~0, float32 rounding can flip the sign
            # of m̂/√v̂ and move that weight by up to lr (1e-2) a step. Allow that for a few
            # weights in a thousand; a wrong kernel would move most of them.
            off = ~np.isclose(weights, want, **tol)
            assert off.mean() < 1e-3, f"{off.sum()} weights differ, fuse={fuse}"
            assert np.abs(weights - want).max() <= 1e-2 * 20, "more than lr per step"
            weights, want = weights[~off], want[~off]
        np.testing.assert_allclose(weights, want, **tol, err_msg=f"weights, fuse={fuse}")
        np.testing.assert_allclose(model._state, ref._state, **tol,
                                   err_msg=f"BatchNorm statistics, fuse={fuse}")
        np.testing.assert_allclose(hist["loss"], ref_hist["loss"], **tol)
        if "accuracy" in ref_hist.history:
            assert hist["accuracy"] == ref_hist["accuracy"]




@pytest.mark.parametrize("backend", FUSED)
def test_twenty_epochs_with_a_schedule_and_early_stopping(backend):
    """A learning rate that changes every epoch (plan data) and weights restored by early
    stopping reach the fused trainer: fused, layer by layer and on the reference, the same."""
    from fastnn.callbacks import EarlyStopping, LearningRateScheduler
    from fastnn.schedules import cosine

    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((120, 12)), rng.integers(0, 3, 120)
    runs = []
    for name, fuse in (("reference", False), (backend, True), (backend, False)):
        model = Sequential(network("batchnorm_residual", "identity"), backend=name, seed=3,
                           dtype="float64")
        model.fuse = fuse
        history = model.fit(X, y, loss="cross_entropy", optimizer=SGD(0.2, momentum=0.9),
                            epochs=20, batch_size=16, validation_split=0.25, verbose=0,
                            callbacks=[LearningRateScheduler(cosine(20)),
                                       EarlyStopping(patience=3)])
        runs.append((model, history))
    (ref, ref_history), *others = runs
    assert ref_history.stopped_epoch is not None            # the restore was exercised
    for model, history in others:
        assert history["lr"] == ref_history["lr"]
        assert history.stopped_epoch == ref_history.stopped_epoch
        np.testing.assert_allclose(model.parameters(), ref.parameters(), rtol=1e-8, atol=1e-9)
        np.testing.assert_allclose(model._state, ref._state, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("kind", ["mlp", "wide", "batchnorm_residual"])
@pytest.mark.parametrize("backend", FUSED)
def test_clip_norm_fused_equals_layer_path_and_reference(backend, kind):
    """The global-norm clip inside the fused step (after the row chunks' gradients are summed)
    gives what the layer path and the reference give."""
    rng = np.random.default_rng(6)
    X, y = rng.standard_normal((160, 12)), rng.standard_normal((160, 3))
    runs = []
    for name, fuse in (("reference", False), (backend, True), (backend, False)):
        model = Sequential(network(kind, "identity"), backend=name, seed=2, dtype="float64")
        model.fuse = fuse
        model.fit(X, y, loss="mse", optimizer=SGD(0.1, momentum=0.9), epochs=2,
                  batch_size=BATCH[kind], clip_norm=0.5, verbose=0)
        runs.append(model)
    ref = runs[0]
    for model in runs[1:]:
        np.testing.assert_allclose(model.parameters(), ref.parameters(), rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(model.gradients(), ref.gradients(), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend", FUSED)
def test_elu_selu_softplus_train_fused_as_on_the_reference(backend, dtype):
    rng = np.random.default_rng(7)
    X, y = 2 * rng.standard_normal((96, 12)), rng.standard_normal((96, 3))
    runs = []
    for name, fuse in (("reference", False), (backend, True), (backend, False)):
        model = Sequential([Dense(12, 16, "elu"), Dense(16, 16, "selu"),
                            Dense(16, 3, "softplus")], backend=name, seed=1, dtype=dtype)
        model.fuse = fuse
        model.fit(X, y, loss="mse", optimizer=SGD(0.05), epochs=2, batch_size=16, verbose=0)
        runs.append(model.parameters())
    for params in runs[1:]:
        np.testing.assert_allclose(params, runs[0], **tolerance(dtype, 16))


def regularised(kind: str, last: str):
    """Networks with Dropout (on the input too), GELU/SiLU layers (their z kept in the plan)
    and BatchNorm; "wide" splits its minibatches into row chunks on several threads."""
    if kind == "input_dropout":
        return [Dropout(0.2), Dense(12, 16, "relu"), Dense(16, 3, last)]
    if kind == "wide":
        return [Dense(12, 384, "gelu_tanh"), Dropout(0.3), BatchNorm(384),
                Residual([Dense(384, 384, "silu"), Dropout(0.1)]), Dense(384, 3, last)]
    return [Dense(12, 24, "gelu"), Dropout(0.2), Dense(24, 16, "silu"), Dropout(0.1),
            Dense(16, 3, last)]


def weighted_fit(backend, fuse, kind, loss, weighting, dtype, optimizer):
    """Two epochs of 20 minibatches (300 rows, batch 16, the last one short) with row
    weights (some 0, one whole minibatch 0) or class weights."""
    rng = np.random.default_rng(8)
    X, y = rng.standard_normal((300, 12)), targets(loss, rng, 300)
    w = rng.uniform(0, 2, 300) * (rng.random(300) < 0.9)
    w[:16] = 0                                           # a minibatch that counts for nothing
    weights = {"none": {}, "sample": {"sample_weight": w},
               "class": {"class_weight": {0: 3.0, 2: 0.5}},
               "both": {"sample_weight": w, "class_weight": "balanced"}}[weighting]
    model = Sequential(regularised(kind, LAST[loss]), backend=backend, seed=4, dtype=dtype)
    model.fuse = fuse
    history = model.fit(X, y, loss=loss, optimizer=optimizer(), epochs=2,
                        batch_size=BATCH.get(kind, 16), shuffle=False, verbose=0, **weights)
    return model, history


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind, loss, weighting", [
    ("mlp", "cross_entropy", "none"), ("mlp", "cross_entropy", "sample"),
    ("mlp", "cross_entropy", "class"), ("mlp", "mse", "sample"),
    ("input_dropout", "binary_cross_entropy", "sample"), ("wide", "cross_entropy", "both")])
@pytest.mark.parametrize("backend", FUSED)
def test_dropout_gelu_silu_and_weights_fused_equal_layer_path_and_reference(
        backend, kind, loss, weighting, dtype):
    """Dropout draws the same counter-based masks fused, layer by layer and on the reference,
    so all three train the same weights; weighted losses and skipped zero-weight minibatches
    too."""
    optimizer = lambda: SGD(0.05, momentum=0.9)          # noqa: E731
    ref, ref_hist = weighted_fit("reference", False, kind, loss, weighting, dtype, optimizer)
    if weighting in ("sample", "both") and kind != "wide":
        assert ref._steps[0] == 2 * 18                   # 19 minibatches, one of weight 0
    tol = tolerance(dtype, 16 * 20)
    for fuse in (True, False):
        model, hist = weighted_fit(backend, fuse, kind, loss, weighting, dtype, optimizer)
        np.testing.assert_allclose(model.parameters(), ref.parameters(), **tol,
                                   err_msg=f"fuse={fuse}")
        np.testing.assert_allclose(hist["loss"], ref_hist["loss"], **tol)
        assert model._steps[0] == ref._steps[0]


@pytest.mark.parametrize("backend", FUSED)
def test_adamw_with_dropout_fused_equals_layer_path(backend):
    optimizer = lambda: AdamW(1e-2, weight_decay=0.05)   # noqa: E731
    ref, _ = weighted_fit("reference", False, "mlp", "cross_entropy", "sample", "float64",
                          optimizer)
    for fuse in (True, False):
        model, _ = weighted_fit(backend, fuse, "mlp", "cross_entropy", "sample", "float64",
                                optimizer)
        np.testing.assert_allclose(model.parameters(), ref.parameters(), rtol=1e-8,
                                   atol=1e-10)


@pytest.mark.parametrize("position", ["first", "inside"])
@pytest.mark.parametrize("backend", FUSED)
def test_standardize_runs_in_the_plan(backend, position):
    """Standardize is a plan op (first: no input gradient; inside a Residual block: its
    gradient added to the skip's), fused as on the reference."""
    from fastnn import Standardize
    rng = np.random.default_rng(10)
    X, y = 3 + 5 * rng.standard_normal((120, 12)), rng.integers(0, 3, 120)
    runs = []
    for name, fuse in (("reference", False), (backend, True), (backend, False)):
        if position == "first":
            layers = [Standardize(12), Dense(12, 16, "relu"), Dense(16, 3)]
        else:
            layers = [Dense(12, 16, "tanh"),
                      Residual([Standardize(16), Dense(16, 16, "relu")]), Dense(16, 3)]
        model = Sequential(layers, backend=name, seed=2, dtype="float64")
        if position == "inside":
            model.layers[1].block[0].adapt(rng.standard_normal((50, 16)) * 2 + 1)
            rng = np.random.default_rng(10)
            X, y = 3 + 5 * rng.standard_normal((120, 12)), rng.integers(0, 3, 120)
        model.fuse = fuse
        assert (model._make_trainer(fastnn.losses.get("cross_entropy"), SGD(), 16)
                is not None) == fuse
        model.fit(X, y, loss="cross_entropy", optimizer=SGD(0.05, momentum=0.9), epochs=2,
                  batch_size=16, standardize=position == "first", verbose=0)
        runs.append(model)
    for model in runs[1:]:
        np.testing.assert_allclose(model.parameters(), runs[0].parameters(), rtol=1e-9,
                                   atol=1e-11)
        np.testing.assert_allclose(model._state, runs[0]._state, rtol=1e-12)
    if position == "first":                              # adapted on the training rows
        np.testing.assert_allclose(runs[0].layers[0].mean, X.mean(axis=0))


def test_standardize_true_needs_a_leading_standardize():
    model = Sequential([Dense(3, 2)])
    before = model.parameters().copy()
    with pytest.raises(ValueError, match="needs fastnn.Standardize"):
        model.fit(np.ones((4, 3)), np.ones((4, 2)), loss="mse", standardize=True, verbose=0)
    np.testing.assert_array_equal(model.parameters(), before)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["mlp", "wide"])
@pytest.mark.parametrize("backend", FUSED)
def test_gradients_of_a_distributed_share_equal_the_reference(backend, kind, dtype):
    """``trainer.gradients``: what each rank computes of a distributed step (fastnn.distributed)
    — its rows of the global minibatch, normalised by the global weight, Dropout masks of the
    rows' global places; "wide" splits the rows over threads."""
    layers = ([Dense(12, 24, "gelu"), Dropout(0.3), Dense(24, 3)] if kind == "mlp" else
              [Dense(12, 384, "relu"), Dropout(0.2), Dense(384, 384, "silu"), Dense(384, 3)])
    check_trainer_gradients(backend, layers, dtype, batch=BATCH[kind], rows=BATCH[kind] - 5)
