"""Callbacks: the training loop's hooks, run between epochs (never inside a compiled step).

A callback reaches the model as ``self.model``. It stops training with
``self.model.stop_training = True`` and changes the learning rate with
``self.model.optimizer.lr = value``; both take effect from the next epoch, and neither
rebuilds the training plan or compiles anything (the learning rate is plan data). ``logs`` holds
the epoch's figures: "loss", "accuracy", "val_loss", "val_accuracy" (those that apply), "lr"
and "epoch_time". Epochs count from 0; messages print them from 1, as Keras does.
"""
from __future__ import annotations

import csv
import math
import os

import numpy as np

from . import validation
from .schedules import Schedule

#: figures a callback may monitor
MONITORS = ("loss", "accuracy", "val_loss", "val_accuracy")


class Callback:
    """Base class: override any of the four hooks."""

    model = None
    #: the fit's verbose level, set by fit (messages print when ≥ 1)
    verbose = 0

    def on_train_begin(self, logs: dict) -> None:
        pass

    def on_epoch_begin(self, epoch: int, logs: dict) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        pass

    def on_train_end(self, logs: dict) -> None:
        pass

    def _say(self, message: str) -> None:
        if self.verbose:
            from tqdm.auto import tqdm
            tqdm.write(message)


class _Monitor(Callback):
    """A callback that tracks the best value of one figure ("min" or "max" is better)."""

    def __init__(self, monitor: str, mode: str, min_delta: float):
        self.monitor = validation.choice(monitor, "monitor", MONITORS)
        mode = validation.choice(mode, "mode", ("auto", "min", "max"))
        if mode == "auto":
            mode = "max" if monitor.endswith("accuracy") else "min"
        self.mode = mode
        self.min_delta = abs(validation.positive_float(min_delta, "min_delta", allow_zero=True))
        self.best = math.inf if mode == "min" else -math.inf

    def _current(self, logs: dict) -> float:
        if self.monitor not in logs:
            raise ValueError(f"monitor={self.monitor!r} is not in this fit's figures "
                             f"({', '.join(k for k in MONITORS if k in logs)}); validation "
                             f"figures need validation_data or validation_split")
        return float(logs[self.monitor])

    def _improved(self, current: float) -> bool:
        if self.mode == "min":
            return current < self.best - self.min_delta
        return current > self.best + self.min_delta


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience``
    epochs (counted from ``start_from_epoch``), as Keras's EarlyStopping. With
    ``restore_best_weights`` the model gets back the parameters and BatchNorm statistics of
    its best epoch when it stops."""

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 10,
                 mode: str = "auto", restore_best_weights: bool = True,
                 start_from_epoch: int = 0):
        super().__init__(monitor, mode, min_delta)
        self.patience = _non_negative_int(patience, "patience")
        self.start_from_epoch = _non_negative_int(start_from_epoch, "start_from_epoch")
        self.restore_best_weights = bool(restore_best_weights)

    def on_train_begin(self, logs):
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait, self.best_epoch, self.stopped_epoch, self.best_weights = 0, None, None, None

    def on_epoch_end(self, epoch, logs):
        current = self._current(logs)
        if epoch < self.start_from_epoch:
            return
        self.wait += 1
        if self._improved(current):
            self.best, self.best_epoch, self.wait = current, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            restored = ""
            if self.restore_best_weights and self.best_weights is not None:
                self.model.set_weights(self.best_weights)
                restored = (f"; restored weights from epoch {self.best_epoch + 1} "
                            f"({self.monitor} {self.best:.4g})")
            self._say(f"Epoch {epoch + 1}: early stopping ({self.monitor} did not improve by "
                      f"more than {self.min_delta:g} for {self.patience} epochs){restored}.")


class ReduceLROnPlateau(_Monitor):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved by more than
    ``min_delta`` for ``patience`` epochs, then wait ``cooldown`` epochs before counting again;
    never below ``min_lr`` (Keras's ReduceLROnPlateau, step for step)."""

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 5,
                 min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0,
                 mode: str = "auto"):
        super().__init__(monitor, mode, min_delta)
        self.factor = validation.positive_float(factor, "factor")
        if self.factor >= 1:
            raise ValueError(f"factor must be in (0, 1): it multiplies the learning rate, got "
                             f"{self.factor}")
        self.patience = _non_negative_int(patience, "patience")
        self.cooldown = _non_negative_int(cooldown, "cooldown")
        self.min_lr = validation.positive_float(min_lr, "min_lr", allow_zero=True)

    def on_train_begin(self, logs):
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = self.cooldown_counter = 0

    def on_epoch_end(self, epoch, logs):
        current = self._current(logs)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(current):
            self.best, self.wait = current, 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                lr = self.model.optimizer.lr
                if lr > self.min_lr:
                    self.model.optimizer.lr = max(lr * self.factor, self.min_lr)
                    self._say(f"Epoch {epoch + 1}: ReduceLROnPlateau reduced the learning "
                              f"rate to {_short(self.model.optimizer.lr)}.")
                    self.cooldown_counter, self.wait = self.cooldown, 0


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of each epoch to ``schedule(epoch, lr)`` (see
    :mod:`fastnn.schedules` for ready-made ones)."""

    def __init__(self, schedule: Schedule):
        if not callable(schedule):
            raise TypeError(f"schedule must be a function (epoch, lr) -> lr, got "
                            f"{type(schedule).__name__}")
        self.schedule = schedule

    def on_epoch_begin(self, epoch, logs):
        lr = self.schedule(epoch, self.model.optimizer.lr)
        if isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating)) \
                or not math.isfinite(lr) or lr < 0:
            raise ValueError(f"the learning-rate schedule returned {lr!r} for epoch "
                             f"{epoch + 1}; it must return a finite number ≥ 0")
        self.model.optimizer.lr = float(lr)


class ModelCheckpoint(_Monitor):
    """Save the model with ``model.save`` (never pickle) at the end of each epoch, or only of
    each epoch that improved ``monitor`` (``save_best_only``). ``path`` may hold ``{epoch}``
    (from 1) and the figures, as in ``"model-{epoch:02d}-{val_loss:.3f}.fnn"``."""

    def __init__(self, path, monitor: str = "val_loss", save_best_only: bool = True,
                 mode: str = "auto"):
        super().__init__(monitor, mode, 0.0)
        self.path = os.fspath(path)
        self.save_best_only = bool(save_best_only)

    def on_train_begin(self, logs):
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_epoch_end(self, epoch, logs):
        current = self._current(logs)
        if self.save_best_only:
            if not self._improved(current):
                return
            self.best = current
        self.model.save(self.path.format(epoch=epoch + 1, **logs))


class CSVLogger(Callback):
    """Append one row per epoch (epoch from 1, then the figures) to a CSV file at ``path``."""

    def __init__(self, path, append: bool = False):
        self.path = os.fspath(path)
        self.append = bool(append)
        self._file = self._writer = None

    def on_train_begin(self, logs):
        self._file = open(self.path, "a" if self.append else "w", newline="")
        self._writer = None

    def on_epoch_end(self, epoch, logs):
        if self._writer is None:
            self._writer = csv.DictWriter(self._file, ["epoch", *logs])
            if self._file.tell() == 0:
                self._writer.writeheader()
        self._writer.writerow({"epoch": epoch + 1, **logs})
        self._file.flush()

    def on_train_end(self, logs):
        if self._file is not None:
            self._file.close()
            self._file = None


def _short(x: float) -> str:
    """A learning rate as people write it: 0.01, 1e-4, 2.5e-5."""
    if x == 0 or x >= 1e-3:
        return f"{x:.4g}"
    mantissa, exponent = f"{x:.3e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _non_negative_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be ≥ 0, got {value}")
    return int(value)


__all__ = ["CSVLogger", "Callback", "EarlyStopping", "LearningRateScheduler", "ModelCheckpoint",
           "ReduceLROnPlateau"]
