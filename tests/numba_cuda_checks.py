"""The numba_cuda backend against the NumPy reference: what the shared suite
(tests/test_kernels.py, also run on numba_cuda by tests/test_numba_cuda.py) does not reach —
matmuls crossing several tiles on every axis, the wide thread tile, the losses' device-side
totals, the trainer's own kernels — and ``fit`` through the device-resident trainer.

tests/test_numba_cuda.py runs this file under Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1),
which runs every GPU thread as a Python thread: shapes are small but chosen to cross tile and
block edges (batch 1, widths 1, several matmul tiles along every axis, more rows than a loss
block has threads). On a machine with a GPU run it directly: ``pytest tests/numba_cuda_checks.py``.
"""
import numpy as np
import pytest

from conftest import check_trainer_gradients, layout, tolerance
from fastnn import Adam, AdamW, BatchNorm, Dense, Dropout, Residual, RMSprop, SGD, Sequential
from fastnn.backends import available_backends, resolve
from fastnn.kernels import ACTIVATIONS
from fastnn.losses import LOSSES

if not available_backends()["numba_cuda"].usable:
    pytest.skip(f"numba_cuda is {available_backends()['numba_cuda'].reason}",
                allow_module_level=True)

from numba import cuda  # noqa: E402

from fastnn.kernels.numba_cuda import ops, trainer  # noqa: E402

gpu = resolve("numba_cuda")[1]
ref = resolve("reference")[1]
f32, f64 = np.float32, np.float64


def rand(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def close(got, want, dtype, reduction=1, what=""):
    np.testing.assert_allclose(got, want, err_msg=what, **tolerance(dtype, reduction))


# -- dense layers: the tiled matmul with its epilogue, fused dZ/db, transposed matmuls -----
DENSE_CASES = [  # activation, dtype, batch, in, out, input layout, first layer (dX is None)
    ("identity", f32, 1, 3, 5, "C", False),          # batch 1
    ("sigmoid", f64, 7, 20, 33, "F", False),
    ("tanh", f32, 9, 17, 2, "strided", True),
    ("relu", f32, 65, 66, 17, "C", False),           # 2+ tiles on every matmul axis, 5 K tiles
    ("leaky_relu", f64, 4, 1, 1, "C", False),        # widths 1
    ("softmax", f32, 6, 5, 7, "C", False),           # row softmax after the epilogue
    ("softmax", f64, 3, 4, 40, "F", False),          # and its backward (row sums), 2 db blocks
]


@pytest.mark.parametrize("act, dtype, batch, n_in, n_out, kind, first", DENSE_CASES)
def test_dense_forward_and_backward(act, dtype, batch, n_in, n_out, kind, first):
    rng = np.random.default_rng(n_in * 1000 + n_out)
    X, b = rand(rng, (batch, n_in), dtype), rand(rng, n_out, dtype)
    W = rand(rng, (n_in, n_out), dtype, 1 / np.sqrt(n_in))
    code = ACTIVATIONS[act]
    A, A_gpu = np.empty((batch, n_out), dtype), np.full((batch, n_out), np.nan, dtype)
    ref.dense_forward(X, W, b, code, A)
    gpu.dense_forward(layout(X, kind), layout(W, kind), b, code, A_gpu)
    close(A_gpu, A, dtype, n_in, "out")

    dA = rand(rng, (batch, n_out), dtype)

    def backward(kernels, kind):
        dZ = layout(dA.copy(), kind)
        dX = None if first else np.full((batch, n_in), np.nan, dtype)
        dW, db = np.full((n_in, n_out), np.nan, dtype), np.full(n_out, np.nan, dtype)
        kernels.dense_backward(dZ, layout(X, kind), layout(W, kind), layout(A, kind), code, dX,
                               dW, db)
        return dZ, dX, dW, db

    for name, got, want, k in zip(("dZ", "dX", "dW", "db"), backward(gpu, kind),
                                  backward(ref, "C"), (n_out, n_out, batch, batch)):
        assert (got is None) == (want is None)
        if want is not None:
            close(got, want, dtype, k, name)


@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, True)])
def test_matmul_wide_thread_tile_and_transposes(trans_a, trans_b):
    """The 8×8-outputs-per-thread variant (128² tiles), operands stored plain or transposed."""
    rng = np.random.default_rng(3)
    P, Q, bias = rand(rng, (20, 33), f32), rand(rng, (33, 37), f32), rand(rng, 37, f32)
    A = np.ascontiguousarray(P.T) if trans_a else P              # op(A) = P
    B = np.ascontiguousarray(Q.T) if trans_b else Q              # op(B) = Q
    C = cuda.device_array((20, 37), f32)
    ops.matmul(cuda.to_device(A), cuda.to_device(B), trans_a, trans_b, C, cuda.to_device(bias),
               ACTIVATIONS["tanh"], thread_tile=8)
    close(C.copy_to_host(), np.tanh(P @ Q + bias), f32, 33)


# -- losses (with the right-prediction counts the trainer accumulates) ----------------------
@pytest.mark.parametrize("dtype, batch, k, scale", [(f32, 300, 3, 1.0), (f64, 5, 1, 30.0),
                                                    (f64, 2, 4, 1.0)])
def test_losses(dtype, batch, k, scale):
    rng = np.random.default_rng(batch)
    Z = rand(rng, (batch, k), dtype, scale)
    targets = {"mse": rand(rng, (batch, k), dtype),
               "binary_cross_entropy": rng.integers(0, 2, (batch, k)).astype(dtype),
               "cross_entropy": rng.integers(0, k, batch).astype(np.int64)}
    for name, y in targets.items():
        if name == "cross_entropy" and k == 1:
            continue
        kernel = LOSSES[name].kernel
        dZ_want, dZ_got = np.empty_like(Z), np.full_like(Z, np.nan)
        want = getattr(ref, kernel)(Z, y, dZ_want)
        got = getattr(gpu, kernel)(Z, y, dZ_got)
        assert isinstance(got, float)
        np.testing.assert_allclose(got, want, err_msg=name, rtol=1e-4 if dtype == f32 else 1e-10)
        close(dZ_got, dZ_want, dtype, 1, name)

        totals = cuda.to_device(np.zeros(2))
        ops.loss(LOSSES[name].code, cuda.to_device(Z), cuda.to_device(y.reshape(batch, -1)),
                 cuda.device_array(Z.shape, dtype), totals)
        loss_sum, n_right = totals.copy_to_host()
        np.testing.assert_allclose(loss_sum, want * batch, rtol=1e-4 if dtype == f32 else 1e-10)
        assert n_right == (LOSSES[name].n_correct(Z, y, probabilities=False) or 0)


# -- the trainer's own kernels -------------------------------------------------------------
def test_add_and_gather_rows():
    rng = np.random.default_rng(5)
    X, Y = rand(rng, (9, 35), f32), rand(rng, (9, 35), f32)
    out = cuda.device_array((9, 35), f32)
    ops.add(cuda.to_device(X), cuda.to_device(Y), out)
    np.testing.assert_array_equal(out.copy_to_host(), X + Y)

    labels = rng.integers(0, 4, (9, 1))
    order = rng.permutation(9)
    Xb, Yb = cuda.device_array((4, 35), f32), cuda.device_array((4, 1), labels.dtype)
    ops.gather_rows(cuda.to_device(X), cuda.to_device(labels), cuda.to_device(order), 5, Xb, Yb)
    np.testing.assert_array_equal(Xb.copy_to_host(), X[order[5:9]])
    np.testing.assert_array_equal(Yb.copy_to_host(), labels[order[5:9]])


# -- fit through the device-resident trainer vs the reference backend ----------------------
def fit_both(build, X, y, loss, optimizer, epochs, batch_size, monkeypatch):
    """Train the same model on the reference and on numba_cuda (fused trainer); return both
    models, histories and optimizers, and how many minibatches were gathered on the device."""
    gathered, gather = [], ops.gather_rows
    monkeypatch.setattr(ops, "gather_rows", lambda *a: gathered.append(gather(*a)))
    runs = []
    for backend in ("reference", "numba_cuda"):
        model, opt = build(backend), optimizer()
        history = model.fit(X, y, loss=loss, optimizer=opt, epochs=epochs,
                            batch_size=batch_size, verbose=0)
        runs.append((model, history, opt))
    return runs, len(gathered)


def assert_same_training(runs, dtype):
    (m_ref, h_ref, o_ref), (m_gpu, h_gpu, o_gpu) = runs
    close(m_gpu.parameters(), m_ref.parameters(), dtype, 1, "parameters")
    close(m_gpu.gradients(), m_ref.gradients(), dtype, 1, "gradients")
    close(m_gpu._state, m_ref._state, dtype, 1, "running statistics")
    for name in ("m", "v", "velocity", "square_avg"):
        if getattr(o_ref, name, None) is not None:
            close(getattr(o_gpu, name), getattr(o_ref, name), dtype, 1, name)
    assert getattr(o_gpu, "t", None) == getattr(o_ref, "t", None)
    np.testing.assert_allclose(h_gpu["loss"], h_ref["loss"], rtol=tolerance(dtype)["rtol"])
    assert h_gpu.history.get("accuracy") == h_ref.history.get("accuracy")


@pytest.mark.parametrize("dtype, optimizer, resident, epochs", [
    ("float64", lambda: Adam(1e-2), True, 2),
    ("float32", lambda: SGD(0.1, momentum=0.9), False, 1)])
def test_fit_on_the_device_matches_the_reference(dtype, optimizer, resident, epochs,
                                                 monkeypatch):
    """Dense, BatchNorm and Residual layers (one nested in another, so gradients are added
    into shared blocks), cross-entropy, a partial last minibatch; the training set resident
    on the device (and reused by the second epoch), or minibatches copied from the host."""
    if not resident:
        monkeypatch.setattr(trainer, "RESIDENT_FRACTION", 0.0)

    def build(backend):
        return Sequential([Dense(4, 6, "relu"), BatchNorm(6),
                           Residual([Dense(6, 6, "tanh"), BatchNorm(6),
                                     Residual(Dense(6, 6, "relu"))]),
                           Dense(6, 3)], backend=backend, seed=2, dtype=dtype)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((9, 4)), rng.integers(0, 3, 9)
    runs, gathered = fit_both(build, X, y, "cross_entropy", optimizer, epochs, 5, monkeypatch)
    assert gathered == (2 * epochs if resident else 0)
    assert_same_training(runs, np.dtype(dtype))


@pytest.mark.parametrize("loss, last", [("binary_cross_entropy", "sigmoid"), ("mse", "softmax")])
def test_fit_other_losses(loss, last, monkeypatch):
    def build(backend):                    # BatchNorm first: no gradient for the data
        return Sequential([BatchNorm(3), Dense(3, 4, "leaky_relu"), Dense(4, 2, last)],
                          backend=backend, seed=1, dtype="float64")
    rng = np.random.default_rng(1)
    X = rng.standard_normal((6, 3))
    y = rng.integers(0, 2, (6, 2)) if loss != "mse" else rng.random((6, 2))
    runs, gathered = fit_both(build, X, y, loss, lambda: SGD(0.5), 1, 3, monkeypatch)
    assert gathered == 2
    assert_same_training(runs, np.dtype("float64"))


def test_optimizers_without_a_kernel_fall_back_to_the_layer_path():
    class Halving(SGD):
        def _step(self, kernels, params, grads):
            kernels.sgd(params, grads, self.lr / 2)
    model = Sequential([Dense(2, 1)], backend="numba_cuda")
    assert model._make_trainer(LOSSES["mse"], Halving(0.1), 4) is None
    assert isinstance(model._make_trainer(LOSSES["mse"], Adam(), 4), trainer.DeviceTrainer)


def test_matmul_tflops_runs():
    assert gpu.matmul_tflops(16, repeats=1) > 0


def test_a_schedule_and_restored_weights_reach_the_device(monkeypatch):
    """A learning rate changed every epoch (plan data) and the weights EarlyStopping restores
    on the host (pushed to the device) train on as on the reference."""
    from fastnn.callbacks import EarlyStopping, LearningRateScheduler
    from fastnn.schedules import cosine

    pushed = []
    push = trainer.DeviceTrainer.push
    monkeypatch.setattr(trainer.DeviceTrainer, "push",
                        lambda self: (pushed.append(1), push(self))[1])
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((24, 3)), rng.integers(0, 2, 24)
    runs = []                          # 18 training rows: one minibatch per epoch, 3 epochs
    for backend in ("reference", "numba_cuda"):
        model = Sequential([Dense(3, 5, "tanh"), BatchNorm(5), Dense(5, 2)], backend=backend,
                           seed=4, dtype="float64")
        history = model.fit(X, y, loss="cross_entropy", optimizer=SGD(0.5, momentum=0.9),
                            epochs=20, batch_size=18, validation_split=0.25, verbose=0,
                            callbacks=[LearningRateScheduler(cosine(20)),
                                       EarlyStopping(patience=2)])
        runs.append((model, history))
    (ref, h_ref), (gpu, h_gpu) = runs
    assert h_ref.stopped_epoch is not None and pushed == [1]
    assert h_gpu["lr"] == h_ref["lr"] and h_gpu.stopped_epoch == h_ref.stopped_epoch
    close(gpu.parameters(), ref.parameters(), np.dtype("float64"), 1, "parameters")
    close(gpu._state, ref._state, np.dtype("float64"), 1, "running statistics")


@pytest.mark.parametrize("optimizer", [
    lambda: SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    lambda: Adam(1e-2, weight_decay=0.01), lambda: AdamW(1e-2, weight_decay=0.1),
    lambda: RMSprop(1e-2), lambda: RMSprop(1e-2, momentum=0.8, weight_decay=0.01)],
    ids=["nesterov_wd", "adam_wd", "adamw", "rmsprop", "rmsprop_momentum_wd"])
def test_every_optimizer_rule_trains_on_the_device(optimizer, monkeypatch):
    """Three steps of each rule (its state carried from step to step, bias corrections of
    t = 1..3); BatchNorm's parameters are covered by the tests above."""
    def build(backend):
        return Sequential([Dense(3, 4, "tanh"), Dense(4, 2)], backend=backend, seed=5,
                          dtype="float64")
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((10, 3)), rng.integers(0, 2, 10)
    runs, _ = fit_both(build, X, y, "cross_entropy", optimizer, 1, 4, monkeypatch)
    assert_same_training(runs, np.dtype("float64"))


def test_clip_norm_on_the_device(monkeypatch):
    def build(backend):
        return Sequential([Dense(3, 6, "relu"), Dense(6, 2)], backend=backend, seed=1,
                          dtype="float64")
    rng = np.random.default_rng(4)
    X, y = rng.standard_normal((12, 3)), rng.standard_normal((12, 2))
    runs = []
    for backend in ("reference", "numba_cuda"):
        model, opt = build(backend), SGD(0.2, momentum=0.9)
        history = model.fit(X, y, loss="mse", optimizer=opt, epochs=1, batch_size=4,
                            clip_norm=0.1, verbose=0)
        runs.append((model, history, opt))
    assert_same_training(runs, np.dtype("float64"))


def test_elu_selu_softplus_on_the_device(monkeypatch):
    def build(backend):
        return Sequential([Dense(3, 5, "elu"), Dense(5, 4, "selu"), Dense(4, 2, "softplus")],
                          backend=backend, seed=3, dtype="float64")
    rng = np.random.default_rng(8)
    X, y = 2 * rng.standard_normal((10, 3)), rng.standard_normal((10, 2))
    runs, _ = fit_both(build, X, y, "mse", lambda: SGD(0.1), 1, 4, monkeypatch)
    assert_same_training(runs, np.dtype("float64"))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_dropout_gelu_silu_and_row_weights_on_the_device(dtype, monkeypatch):
    """The device draws the same counter-based Dropout masks as the reference, keeps z for
    GELU and SiLU, weights the loss by rows and skips a minibatch of weight 0."""
    def build(backend):
        return Sequential([Dropout(0.2), Dense(4, 6, "gelu"), Dropout(0.3),
                           Residual([Dense(6, 6, "silu"), Dropout(0.1)]),
                           Dense(6, 5, "gelu_tanh"), Dense(5, 3)], backend=backend, seed=5,
                          dtype=dtype)
    rng = np.random.default_rng(9)
    X, y = rng.standard_normal((14, 4)), rng.integers(0, 3, 14)
    w = rng.uniform(0, 2, 14)
    w[:4] = 0                                            # the first minibatch counts for nothing
    runs = []
    for backend in ("reference", "numba_cuda"):
        model, opt = build(backend), SGD(0.3, momentum=0.9)
        history = model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=1, batch_size=4,
                            shuffle=False, sample_weight=w, verbose=0)
        runs.append((model, history, opt))
    assert runs[0][0]._steps[0] == runs[1][0]._steps[0] == 3
    assert_same_training(runs, np.dtype(dtype))


def test_dropout_kernel_adds_into_a_gradient():
    rng = np.random.default_rng(2)
    X, base = rng.standard_normal((5, 33)), rng.standard_normal((5, 33))
    want = np.empty_like(X)
    ref.dropout(X, 0.4, 99, want)
    out = cuda.to_device(base)
    ops.dropout(cuda.to_device(X), 0.4, 99, out, mode=2)   # GRAD_ADD
    np.testing.assert_allclose(out.copy_to_host(), base + want, rtol=1e-12)


def test_standardize_on_the_device(monkeypatch):
    from fastnn import Standardize

    def build(backend):
        model = Sequential([Standardize(4), Dense(4, 6, "tanh"),
                            Residual([Standardize(6), Dense(6, 6, "relu")]), Dense(6, 2)],
                           backend=backend, seed=2, dtype="float64")
        model.layers[0].adapt(np.arange(20.0).reshape(5, 4) ** 1.5)
        model.layers[2].block[0].adapt(np.arange(30.0).reshape(5, 6) % 7)
        return model
    rng = np.random.default_rng(3)
    X, y = 5 * rng.standard_normal((10, 4)) + 2, rng.standard_normal((10, 2))
    runs, _ = fit_both(build, X, y, "mse", lambda: SGD(0.05), 1, 4, monkeypatch)
    assert_same_training(runs, np.dtype("float64"))


@pytest.mark.parametrize("dtype", [f32, f64])
def test_gradients_of_a_distributed_share_on_the_device(dtype):
    """``DeviceTrainer.gradients`` (a rank's share of a distributed step): weighted rows,
    the global weight, Dropout masks of the rows' global places."""
    check_trainer_gradients("numba_cuda", [Dense(6, 9, "gelu"), Dropout(0.3), Dense(9, 3)],
                            dtype, batch=12, rows=7)


def test_fused_predict_on_the_device_matches_the_layer_path_and_reference(monkeypatch):
    """predict and evaluate run the inference plan on the device (DevicePredictor): the same
    output as the layer path and the reference for Standardize, GELU, Dropout, BatchNorm with
    its running statistics and a Residual whose skip reads the input, over several chunks
    (batch_size 7) and one; a NaN is reported as validation reports it."""
    from fastnn import Standardize
    from fastnn.kernels.numba_cuda import predict

    rng = np.random.default_rng(11)

    def layers():
        scale = Standardize(5)
        scale.adapt(np.linspace(-2, 3, 40).reshape(8, 5))
        return [scale, Residual([Dense(5, 5, "gelu"), Dense(5, 5)]), Dense(5, 9, "tanh"),
                Dropout(0.3), BatchNorm(9), Dense(9, 3, "softmax")]

    X, y = rng.standard_normal((20, 5)), rng.integers(0, 3, 20)
    for dtype in ("float64", "float32"):
        want_model = Sequential(layers(), backend="reference", seed=2, dtype=dtype)
        want_model.fit(X, y, loss="cross_entropy", epochs=1, batch_size=8, verbose=0)
        model = Sequential(layers(), backend="numba_cuda", seed=2, dtype=dtype)
        model.parameters()[...] = want_model.parameters()
        model._state[...] = want_model._state
        model.fuse = False
        layer_path = model.predict(X, batch_size=7)
        model.fuse = True
        want = want_model.predict(X)
        want_eval = want_model.evaluate(X, y, "cross_entropy", batch_size=7)
        assert isinstance(model._predictor(7, logits=False), predict.DevicePredictor)
        monkeypatch.setattr(Sequential, "_forward", lambda *a, **k: pytest.fail("layer path"))
        for bs in (7, 1024):
            got = model.predict(X, batch_size=bs)
            close(got, want, dtype, 9, f"predict {dtype} batch_size {bs}")
            close(got, layer_path, dtype, 9, f"vs the layer path, {dtype}")
        got_eval = model.evaluate(X, y, "cross_entropy", batch_size=7)
        assert got_eval["accuracy"] == want_eval["accuracy"]
        assert got_eval["loss"] == pytest.approx(want_eval["loss"], rel=1e-4)
        bad = X.copy()
        bad[15, 2] = np.nan
        with pytest.raises(ValueError, match=r"1 NaN or Inf value\(s\), the first at index "
                                             r"\(15, 2\)"):
            model.predict(bad, batch_size=7)
        monkeypatch.undo()
