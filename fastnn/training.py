"""``Sequential.fit``'s training loop around the epochs: the History, the callback list, the
validation split, the epoch loop itself (shared by single-process and distributed training),
the layer-by-layer path's gradient clipping and the best epoch of a history."""
from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable

import numpy as np
from tqdm.auto import tqdm

from .callbacks import Callback, EarlyStopping
from .kernels import CLIP_EPS


class History:
    """Per-epoch training figures, as returned by :meth:`Sequential.fit`.

    ``history.history`` maps names ("loss", "accuracy", "val_loss", "val_accuracy", "lr",
    "epoch_time", and "gradient_norms": an array of per-layer norms) to one value per epoch;
    ``history["loss"]`` is a shortcut.
    """

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        #: the epoch (from 0) with the best val_loss (or the EarlyStopping monitor; loss
        #: without validation), and the epoch at which training stopped early (else None)
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        #: whether a backend's fused trainer ran the steps (False: layer by layer)
        self.fused = False

    def record(self, **values) -> None:
        for name, value in values.items():
            if value is not None:
                self.history.setdefault(name, []).append(value)

    def __getitem__(self, name: str) -> list[float]:
        return self.history[name]

    def __repr__(self):
        last = ", ".join(f"{k}={v[-1]:.4g}" for k, v in self.history.items()
                         if np.ndim(v[-1]) == 0)
        return f"History({len(self.history.get('loss', []))} epochs; last: {last})"


#: validation_split when early stopping is asked for without validation data (scikit-learn's)
EARLY_STOPPING_SPLIT = 0.1


def callback_list(callbacks, early_stopping) -> list[Callback]:
    """The fit's callbacks, checked, with the ``early_stopping`` shortcut appended."""
    if callbacks is None:
        callbacks = []
    elif isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"callbacks must be a list of fastnn.callbacks.Callback, got "
                        f"{type(callbacks).__name__}")
    callbacks = list(callbacks)
    for i, callback in enumerate(callbacks):
        if not isinstance(callback, Callback):
            raise TypeError(f"callbacks[{i}] is a {type(callback).__name__}, not a "
                            f"fastnn.callbacks.Callback")
    if isinstance(early_stopping, bool):
        if early_stopping:
            callbacks.append(EarlyStopping(patience=10))
    elif isinstance(early_stopping, numbers.Integral):
        callbacks.append(EarlyStopping(patience=int(early_stopping)))
    else:
        raise TypeError(f"early_stopping must be True, False or a patience (int), got "
                        f"{early_stopping!r}")
    return callbacks


def check_monitors(callbacks, has_validation: bool, has_accuracy: bool) -> None:
    """Raise ValueError, before any training, for a callback monitoring a figure this fit
    will not have (validation figures without validation data, accuracy with mse)."""
    for callback in callbacks:
        monitor = getattr(callback, "monitor", None)
        if monitor is None:
            continue
        if monitor.startswith("val_") and not has_validation:
            raise ValueError(f"{type(callback).__name__} monitors {monitor!r}, which needs "
                             f"validation_data or validation_split")
        if monitor.endswith("accuracy") and not has_accuracy:
            raise ValueError(f"{type(callback).__name__} monitors {monitor!r}, but loss='mse' "
                             f"has no accuracy")


def split_fraction(validation_split, early_stopping) -> float:
    """The fraction to hold out: ``validation_split``, or 0.1 with early stopping and no
    validation data, as scikit-learn's MLP does."""
    if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real):
        raise TypeError(f"validation_split must be a number in [0, 1), got "
                        f"{type(validation_split).__name__}")
    fraction = float(validation_split)
    if not 0 <= fraction < 1:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
    if fraction == 0 and early_stopping is not False:
        return EARLY_STOPPING_SPLIT
    return fraction


def split(y: np.ndarray, fraction: float, stratify: bool, rng: np.random.Generator):
    """(training rows, validation rows), each sorted indices, holding out ``fraction`` of the
    rows at random; (None, None) for 0 (every row trains). Indices, not copies of X: the
    trainers take rows by index anyway. Stratified: each class (each distinct target row)
    gives its share, rounded, so the validation set has the training set's class balance."""
    if fraction == 0:
        return None, None
    n = len(y)
    n_val = int(round(fraction * n))
    if n_val < 1 or n - n_val < 1:
        raise ValueError(f"validation_split={fraction} of {n} rows leaves {n - n_val} for "
                         f"training and {n_val} for validation; both need at least one")
    if stratify:
        targets = y.reshape(n, -1)
        classes = targets[:, 0] if targets.shape[1] == 1 else np.unique(
            targets, axis=0, return_inverse=True)[1].reshape(-1)
        # integer classes are counted, which needs no sorted copy of the labels as unique does
        present = np.flatnonzero(np.bincount(classes)) if classes.dtype.kind == "i" \
            else np.unique(classes)
        held = []
        for c in present:
            rows = rng.permutation(np.flatnonzero(classes == c))
            held.append(rows[:int(round(fraction * len(rows)))].copy())   # frees the rest
        val = np.concatenate(held)
        if len(val) == 0 or len(val) == n:               # rounding took all or nothing
            val = rng.permutation(n)[:n_val]
    else:
        val = rng.permutation(n)[:n_val]
    keep = np.ones(n, bool)
    keep[val] = False
    return np.flatnonzero(keep), np.sort(val)


def take(rows: np.ndarray | None, *arrays) -> tuple:
    """The arrays' rows ``rows`` (copies), or the arrays themselves for rows None; a None
    array stays None."""
    if rows is None:
        return arrays
    return tuple(None if a is None else a[rows] for a in arrays)


def sum_of_squares(x: np.ndarray) -> float:
    """Σ x², accumulated in float64, for a 1-D x. By einsum's own loop, not a BLAS dot: NumPy's
    OpenBLAS threads a dot of more than 10 000 entries, and its woken workers then spin on the
    cores that the kernels' threads need next (a per-epoch dot made a 50-256-256-5 fit's
    epochs 326-332 ms instead of 180-186)."""
    return float(np.einsum("i,i->", x, x, dtype=np.float64))


def clip_gradients(grads: np.ndarray, clip_norm: float) -> None:
    """g ← g·min(1, c/(‖g‖₂ + ε)) in place, as the fused trainers clip (torch's
    clip_grad_norm_)."""
    norm = math.sqrt(sum_of_squares(grads))
    grads *= grads.dtype.type(min(1.0, clip_norm / (norm + CLIP_EPS)))


def best_epoch(history, callbacks) -> int | None:
    """The EarlyStopping callback's best epoch, else the argmin of val_loss (of loss without
    validation)."""
    for callback in callbacks:
        if isinstance(callback, EarlyStopping) and callback.best_epoch is not None:
            return callback.best_epoch
    values = history.history.get("val_loss") or history.history.get("loss")
    return int(np.argmin(values)) if values else None


def _nothing() -> None:
    pass


class _SilentBar:
    """The part of tqdm's interface that :func:`run_epochs` uses, doing nothing: a silent fit
    builds no progress bar (a disabled tqdm still costs ~40 µs per fit, which a loop of
    one-epoch fits or ``partial_fit`` calls pays every time)."""

    def __init__(self, epochs: int):
        self._epochs = range(epochs)

    def __iter__(self):
        return iter(self._epochs)

    def set_description(self, *args, **kwargs) -> None:
        pass

    set_postfix = set_description

    def close(self) -> None:
        pass


def run_epochs(model, optimizer, epochs: int, callbacks: list[Callback], verbose,
               train_epoch: Callable[[int], dict], probe: Callable[[], dict] | None = None,
               after_callbacks: Callable[[], None] = _nothing,
               finish: Callable[[], None] = _nothing) -> History:
    """The epoch loop of ``fit``: callbacks, the progress bar and the History, around
    ``train_epoch(epoch)``, which trains one epoch and returns its figures ("loss",
    "accuracy", "val_*"; None values are left out). ``probe()`` adds records measured after
    the epoch's clock stopped (gradient norms); ``after_callbacks()`` runs after the epoch's
    callbacks (a trainer taking weights a callback restored); ``finish()`` when the loop
    ends, however it ends."""
    history = History()
    model.optimizer, model.stop_training, model._weights_changed = optimizer, False, False
    for callback in callbacks:
        callback.model, callback.verbose = model, verbose
        callback.on_train_begin({})
    bar = tqdm(range(epochs), unit="epoch", desc=f"Epoch 1/{epochs}",
               bar_format="{desc} {bar} [{elapsed}<{remaining}{postfix}]") \
        if verbose else _SilentBar(epochs)
    try:
        for epoch in bar:
            bar.set_description(f"Epoch {epoch + 1}/{epochs}", refresh=False)
            for callback in callbacks:
                callback.on_epoch_begin(epoch, {})
            start = time.perf_counter()
            logs = train_epoch(epoch)
            if not math.isfinite(logs["loss"]):
                raise FloatingPointError(
                    f"the loss became {logs['loss']} in epoch {epoch + 1}; lower the learning "
                    f"rate (the weights have diverged)")
            logs = {k: v for k, v in logs.items() if v is not None}
            logs["lr"] = optimizer.lr
            logs["epoch_time"] = time.perf_counter() - start
            history.record(**logs)
            bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()
                             if k not in ("epoch_time", "lr")}, refresh=False)
            if probe is not None:
                history.record(**probe())
            for callback in callbacks:
                callback.on_epoch_end(epoch, logs)
            after_callbacks()
            if model.stop_training:
                history.stopped_epoch = epoch
                break
    finally:
        bar.close()
        finish()
    for callback in callbacks:
        callback.on_train_end({})
    history.best_epoch = best_epoch(history, callbacks)
    return history
