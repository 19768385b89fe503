"""The training loop: validation split, callbacks (early stopping with the best weights,
learning-rate reduction and schedules, checkpoints, CSV logs), the history's best epoch, the
plot, and bad arguments. Schedules are checked against PyTorch's values, written here (PyTorch
is not a test dependency)."""
import csv

import numpy as np
import pytest

import fastnn
from fastnn import Adam, BatchNorm, Dense, SGD, Sequential, schedules
from fastnn.callbacks import (CSVLogger, Callback, EarlyStopping, LearningRateScheduler,
                              ModelCheckpoint, ReduceLROnPlateau)
from fastnn.training import split


def overfitting_task(backend="reference"):
    """A wide network on few noisy rows: validation loss turns up after a few epochs."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 10))
    y = (X[:, 0] + 2.0 * rng.standard_normal(60) > 0).astype(int)
    model = Sequential([Dense(10, 256, "relu"), Dense(256, 2)], backend=backend, seed=0,
                       dtype="float64")
    return model, X[:40], y[:40], X[40:], y[40:]


def test_early_stopping_restores_the_best_epoch():
    model, X, y, X_val, y_val = overfitting_task()
    stop = EarlyStopping(patience=5)
    history = model.fit(X, y, loss="cross_entropy", optimizer=Adam(1e-2), epochs=200,
                        validation_data=(X_val, y_val), callbacks=[stop], verbose=0)
    assert len(history["loss"]) < 200 and history.stopped_epoch == len(history["loss"]) - 1
    assert history.best_epoch == int(np.argmin(history["val_loss"])) == stop.best_epoch
    assert history.stopped_epoch == history.best_epoch + 5
    after = model.evaluate(X_val, y_val, loss="cross_entropy")["loss"]
    assert after == pytest.approx(min(history["val_loss"]), rel=1e-12)


def test_without_restore_the_last_weights_stay():
    model, X, y, X_val, y_val = overfitting_task()
    history = model.fit(X, y, loss="cross_entropy", optimizer=Adam(1e-2), epochs=200,
                        validation_data=(X_val, y_val), verbose=0,
                        callbacks=[EarlyStopping(patience=5, restore_best_weights=False)])
    after = model.evaluate(X_val, y_val, loss="cross_entropy")["loss"]
    assert after == pytest.approx(history["val_loss"][-1], rel=1e-12)
    assert after > min(history["val_loss"])


def test_batchnorm_statistics_are_restored_too():
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((50, 4)), rng.integers(0, 2, 50)
    snapshots = {}

    class Snapshot(Callback):
        def on_epoch_end(self, epoch, logs):
            snapshots[epoch] = self.model.get_weights()

    model = Sequential([Dense(4, 64, "relu"), BatchNorm(64), Dense(64, 2)], backend="reference")
    stop = EarlyStopping(patience=3)
    model.fit(X, y, loss="cross_entropy", optimizer=Adam(5e-2), epochs=100, validation_split=0.3,
              callbacks=[Snapshot(), stop], verbose=0)
    params, state = snapshots[stop.best_epoch]
    np.testing.assert_array_equal(model.parameters(), params)
    np.testing.assert_array_equal(model._state, state)


def test_early_stopping_shortcut_holds_out_a_tenth():
    model, X, y, _, _ = overfitting_task()
    history = model.fit(X, y, loss="cross_entropy", optimizer=Adam(1e-2), epochs=200,
                        early_stopping=3, verbose=0)
    assert "val_loss" in history.history and history.stopped_epoch is not None


def test_early_stopping_message(capsys):
    model, X, y, X_val, y_val = overfitting_task()
    model.fit(X, y, loss="cross_entropy", optimizer=Adam(1e-2), epochs=200,
              validation_data=(X_val, y_val), callbacks=[EarlyStopping(patience=4)], verbose=1)
    out = capsys.readouterr()
    assert "early stopping (val_loss did not improve by more than 0 for 4 epochs); restored " \
           "weights from epoch" in out.out + out.err


class _Optimizer:
    lr = 1.0


class _Model:
    optimizer = _Optimizer()
    stop_training = False


def test_reduce_lr_on_plateau_follows_factor_patience_cooldown_and_min_lr():
    callback = ReduceLROnPlateau(factor=0.5, patience=2, cooldown=1, min_lr=0.1, min_delta=0)
    callback.model = _Model()
    callback.model.optimizer.lr = 1.0
    callback.on_train_begin({})
    losses = [1.0, 0.9, 0.95, 0.97, 0.96, 0.99, 0.98, 0.97, 0.5, 0.6, 0.7, 0.8, 0.9]
    lrs = []
    for epoch, loss in enumerate(losses):
        callback.on_epoch_end(epoch, {"val_loss": loss})
        lrs.append(callback.model.optimizer.lr)
    assert lrs == [1, 1, 1, .5, .5, .25, .25, .125, .125, .125, .1, .1, .1]


def test_reduce_lr_message(capsys):
    callback = ReduceLROnPlateau(factor=0.1, patience=1)
    callback.model, callback.verbose = _Model(), 1
    callback.model.optimizer.lr = 1e-3
    callback.on_train_begin({})
    for epoch, loss in enumerate([1.0, 1.0]):
        callback.on_epoch_end(epoch, {"val_loss": loss})
    out = capsys.readouterr()
    assert "Epoch 2: ReduceLROnPlateau reduced the learning rate to 1e-4." in out.out + out.err


#: PyTorch 2.13's schedulers from lr 0.1, one scheduler.step() per epoch
TORCH = {
    "CosineAnnealingLR(T_max=10, eta_min=0.001)": (
        schedules.cosine(10, min_lr=0.001),
        [0.1, 0.097577297557, 0.090546341222, 0.079595369988, 0.065796341222, 0.0505,
         0.035203658778, 0.021404630012, 0.010453658778, 0.003422702443, 0.001]),
    "StepLR(step_size=3, gamma=0.5)": (
        schedules.step(3, 0.5),
        [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.0125, 0.0125, 0.0125]),
    "ExponentialLR(gamma=0.9)": (
        schedules.exponential(0.9),
        [0.1, 0.09, 0.081, 0.0729, 0.06561, 0.059049, 0.0531441, 0.04782969, 0.043046721,
         0.0387420489, 0.03486784401, 0.031381059609]),
    "LinearLR(start_factor=1, end_factor=0.2, total_iters=5)": (
        schedules.linear(5, 0.02), [0.1, 0.084, 0.068, 0.052, 0.036, 0.02, 0.02, 0.02]),
    "LinearLR(start_factor=1/4, end_factor=1, total_iters=3)": (
        schedules.warmup(4), [0.025, 0.05, 0.075, 0.1]),
}


@pytest.mark.parametrize("name", sorted(TORCH))
def test_schedules_equal_pytorch(name):
    schedule, values = TORCH[name]
    lr = 0.1
    got = []
    for epoch in range(len(values)):
        lr = schedule(epoch, lr if epoch else 0.1)
        got.append(lr)
    np.testing.assert_allclose(got, values, rtol=0, atol=1e-12)    # 12 decimals written


def test_warmup_then_another_schedule():
    schedule = schedules.warmup(2, then=schedules.step(2, 0.5))
    assert [schedule(e, 1.0) for e in range(6)] == [0.5, 1.0, 1.0, 1.0, 0.5, 0.5]


@pytest.mark.parametrize("backend", [n for n, i in fastnn.available_backends().items()
                                     if i.usable])
def test_scheduled_learning_rates_reach_training_and_history(backend):
    """A schedule's rates are the ones the steps use: the same as fitting one epoch at a time
    at those rates (fused trainers read them as plan data)."""
    model, X, y, X_val, y_val = overfitting_task(backend)
    history = model.fit(X, y, loss="cross_entropy", optimizer=SGD(0.1), epochs=5,
                        shuffle=False, validation_data=(X_val, y_val), verbose=0,
                        callbacks=[LearningRateScheduler(schedules.step(2, 0.5))])
    assert history["lr"] == [0.1, 0.1, 0.05, 0.05, 0.025]
    by_hand, *_ = overfitting_task(backend)
    opt = SGD(0.1)
    for lr in history["lr"]:
        opt.lr = lr
        by_hand.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=1, shuffle=False,
                    verbose=0)
    np.testing.assert_array_equal(by_hand.parameters(), model.parameters())


def test_model_checkpoint_keeps_the_best_epoch(tmp_path):
    model, X, y, X_val, y_val = overfitting_task()
    path = tmp_path / "best.fnn"
    model.fit(X, y, loss="cross_entropy", optimizer=Adam(1e-2), epochs=200,
              validation_data=(X_val, y_val), verbose=0,
              callbacks=[ModelCheckpoint(path), EarlyStopping(patience=5)])
    best = fastnn.load(path, backend="reference")
    np.testing.assert_array_equal(best.predict(X_val), model.predict(X_val))


def test_model_checkpoint_every_epoch_with_a_pattern(tmp_path):
    model, X, y, X_val, y_val = overfitting_task()
    model.fit(X, y, loss="cross_entropy", optimizer=Adam(1e-2), epochs=3,
              validation_data=(X_val, y_val), verbose=0,
              callbacks=[ModelCheckpoint(tmp_path / "m{epoch:02d}.fnn", save_best_only=False)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m01.fnn", "m02.fnn", "m03.fnn"]


def test_csv_logger(tmp_path):
    model, X, y, X_val, y_val = overfitting_task()
    path = tmp_path / "log.csv"
    history = model.fit(X, y, loss="cross_entropy", epochs=3, validation_data=(X_val, y_val),
                        callbacks=[CSVLogger(path)], verbose=0)
    rows = list(csv.DictReader(path.open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert [float(r["val_loss"]) for r in rows] == history["val_loss"]
    assert {"loss", "accuracy", "val_accuracy", "lr", "epoch_time"} <= set(rows[0])


def test_validation_split_is_seeded_and_stratified():
    y = np.repeat([0, 1, 2, 3], 25)
    train, val = split(y, 0.2, True, np.random.default_rng(0))
    again = split(y, 0.2, True, np.random.default_rng(0))
    for a, b in zip((train, val), again):
        np.testing.assert_array_equal(a, b)
    assert len(val) == 20 and np.bincount(y[val]).tolist() == [5, 5, 5, 5]
    # row indices, sorted, that split the rows in two
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(100))
    assert (np.diff(train) > 0).all() and (np.diff(val) > 0).all()


def test_plot_history_writes_a_png(tmp_path):
    model, X, y, X_val, y_val = overfitting_task()
    history = model.fit(X, y, loss="cross_entropy", epochs=3, validation_data=(X_val, y_val),
                        verbose=0)
    path = tmp_path / "history.png"
    fastnn.plot_history(history, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kwargs, error, message", [
    ({"validation_split": 1.0}, ValueError, r"validation_split must be in \[0, 1\)"),
    ({"validation_split": -0.1}, ValueError, r"validation_split must be in \[0, 1\)"),
    ({"validation_split": 0.01}, ValueError, "both need at least one"),
    ({"validation_split": "0.2"}, TypeError, "validation_split must be a number"),
    ({"callbacks": [object()]}, TypeError, r"callbacks\[0\] is a object"),
    ({"callbacks": EarlyStopping()}, TypeError, "callbacks must be a list"),
    ({"early_stopping": "yes"}, TypeError, "early_stopping must be True, False or"),
    ({"callbacks": [EarlyStopping()]}, ValueError, "monitors 'val_loss', which needs"),
])
def test_bad_fit_arguments_raise_before_training(kwargs, error, message):
    model, X, y, _, _ = overfitting_task()
    before = model.parameters().copy()
    with pytest.raises(error, match=message):
        model.fit(X, y, loss="cross_entropy", epochs=2, verbose=0, **kwargs)
    np.testing.assert_array_equal(model.parameters(), before)


@pytest.mark.parametrize("make, message", [
    (lambda: EarlyStopping(monitor="val_los"), "unknown monitor 'val_los'"),
    (lambda: EarlyStopping(patience=-1), "patience must be ≥ 0"),
    (lambda: ReduceLROnPlateau(factor=1.0), r"factor must be in \(0, 1\)"),
    (lambda: ReduceLROnPlateau(factor=0.0), "factor must be a finite positive number"),
    (lambda: ReduceLROnPlateau(min_lr=-1e-3), "min_lr must be a finite non-negative"),
    (lambda: LearningRateScheduler(0.1), "schedule must be a function"),
])
def test_bad_callback_arguments(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


@pytest.mark.parametrize("bad", [float("nan"), -0.1, float("inf")])
def test_a_schedule_returning_a_bad_rate_names_the_epoch(bad):
    model, X, y, _, _ = overfitting_task()
    with pytest.raises(ValueError, match=f"returned {bad!r} for epoch 3"):
        model.fit(X, y, loss="cross_entropy", epochs=5, verbose=0,
                  callbacks=[LearningRateScheduler(lambda e, lr: lr if e < 2 else bad)])


def test_a_callback_stops_training_and_sets_the_rate():
    class StopAtTwo(Callback):
        def on_epoch_end(self, epoch, logs):
            self.model.optimizer.lr = 0.5
            self.model.stop_training = epoch == 1

    model, X, y, _, _ = overfitting_task()
    history = model.fit(X, y, loss="cross_entropy", optimizer=SGD(0.1), epochs=10,
                        callbacks=[StopAtTwo()], verbose=0)
    assert history["lr"] == [0.1, 0.5] and history.stopped_epoch == 1
