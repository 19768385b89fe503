"""Models trained from a table: what ``fastnn train DATA.csv --target COLUMN`` runs.

>>> from fastnn import tabular
>>> table = tabular.read_csv("train.csv")
>>> model = tabular.train(table, "species", hidden=(64,), epochs=50, verbose=0)
>>> model.validation                  # the held-out split: {'loss': ..., 'accuracy': ...}
>>> model.predict(tabular.read_csv("new.csv"))      # the original labels, strings included
>>> model.save("iris.fnn"); same = tabular.load("iris.fnn")

The network is a :class:`~fastnn.Sequential` whose first layer is a
:class:`~fastnn.Standardize` adapted on the training rows' numeric columns (one-hot inputs
pass through it unchanged); :mod:`fastnn.encoding` turns cells into its inputs. A classifier
ends in softmax and is trained with cross-entropy. A regressor is trained on the standardised
target and the target's scale is then folded into its last Dense layer, so the network itself
predicts in the target's units. ``fastnn.load`` of the file gives that network (it takes the
encoded rows); :func:`load` gives the whole model.
"""
from __future__ import annotations

import os

import numpy as np

from . import io
from .csvfile import Table, read_csv
from .encoding import Target, TableEncoder
from .layers import Dense, hidden_stack
from .model import Sequential
from .preprocessing import Standardize

__all__ = ["TabularModel", "load", "read_csv", "train"]


class TabularModel:
    """A network with the encoding of its table's columns and its target's labels.

    After :func:`train`: ``history`` (the fit's :class:`~fastnn.History`), ``validation``
    (scores on the held-out rows, or None), ``rows`` ({"train": n, "held_out": n}) and
    ``summary`` (lines saying what was chosen).
    """

    def __init__(self, network: Sequential, encoder: TableEncoder, target: Target):
        if network.in_features != encoder.width:
            raise ValueError(f"the network takes {network.in_features} inputs but the "
                             f"encoding gives {encoder.width}")
        self.network, self.encoder, self.target = network, encoder, target
        self.history = self.validation = self.rows = None
        self.summary: list[str] = []

    @classmethod
    def from_config(cls, network: Sequential, config: dict) -> TabularModel:
        """Rebuild from a model file's ``"tabular"`` entry (see :meth:`save`)."""
        return cls(network, TableEncoder.from_config(config["encoder"]),
                   Target.from_config(config["target"]))

    @property
    def task(self) -> str:
        return self.target.task

    def encode(self, table: Table, also=()) -> np.ndarray:
        """The network's inputs for the table's rows (see :meth:`TableEncoder.transform`)."""
        return self.encoder.transform(table, self.network.dtype, also)

    def predict_proba(self, table: Table) -> np.ndarray:
        """Class probabilities (rows, classes), columns in the order of ``target.classes``."""
        if self.task != "classification":
            raise ValueError("predict_proba needs a classification model; this one is a "
                             "regression")
        return self.network.predict(self.encode(table))

    def predict(self, table: Table) -> np.ndarray:
        """One prediction per row, in order: the original class label, or the number."""
        if self.task == "classification":
            return self.target.decode(self.predict_proba(table).argmax(axis=1))
        return self.network.predict(self.encode(table))[:, 0]

    def evaluate(self, table: Table, target: str | None = None) -> dict:
        """Scores against the table's ``target`` column (default: the training target's
        name): {"loss", "accuracy"} (cross-entropy) or {"loss", "r2"} (mse, R²)."""
        column = self.target.name if target is None else target
        y = self.target.encode(table, column)
        return scores(self.network, self.encode(table, also=(column,)), y, self.task)

    def prediction_columns(self, table: Table, proba: bool = False):
        """(header, columns) of a predictions file: the target's name with one prediction
        per row, then with ``proba`` one probability column per class, 'proba_<label>'."""
        if proba and self.task != "classification":
            raise ValueError("--proba applies to classification models; this one is a "
                             "regression")
        if not proba:
            return [self.target.name], [self.predict(table)]
        p = self.predict_proba(table)
        labels = self.target.decode(p.argmax(axis=1))
        header = [self.target.name] + [f"proba_{c}" for c in self.target.classes.tolist()]
        return header, [labels] + list(p.T)

    def save(self, path: str | os.PathLike) -> None:
        """Write the network, the encoding and the target's labels to ``path`` (one .fnn
        file, no pickle)."""
        io.save(self.network, path, tabular={"encoder": self.encoder.to_config(),
                                             "target": self.target.to_config()})

    def to_onnx(self, path: str | os.PathLike, opset: int = 17) -> None:
        """Export to ONNX with the encoding in the graph: one input per feature column
        (float numbers, or strings one-hot encoded in the graph); outputs ``label`` and
        ``probabilities`` (classification) or ``prediction`` (regression)."""
        from .onnx_export import export_tabular
        export_tabular(self, path, opset)

    def __repr__(self):
        return (f"TabularModel({self.task}, target={self.target.name!r}, "
                f"{len(self.encoder.features)} columns -> {self.encoder.width} inputs)")


def train(table: Table, target: str, task: str = "auto", hidden=(128,),
          activation: str = "relu", init: str | None = None, validation_split: float = 0.2,
          ignore=(), numeric=(), categorical=(), backend: str = "auto", seed: int = 0,
          dtype: str = "float32", dropout: float = 0.0, **fit_args) -> TabularModel:
    """Train a model predicting column ``target`` from the table's other columns.

    ``task``: "auto" (classification for text or integer targets with at most 20 distinct
    values, regression otherwise), "classification" or "regression". ``ignore``: columns
    left out; ``numeric`` / ``categorical``: columns whose encoding is declared rather than
    inferred. ``dropout``: Dropout(p) after each hidden layer. ``validation_split`` of the
    rows (seeded; stratified for classification) is held out, validates every epoch and is
    scored at the end (``model.validation``). Everything in ``fit_args`` (optimizer, epochs,
    batch_size, early_stopping, callbacks, clip_norm, class_weight, verbose, ...) goes to
    :meth:`Sequential.fit`.
    """
    encoder = TableEncoder.fit(table, target, ignore, numeric, categorical)
    tgt, why = Target.fit(table, target, task)
    X, y = encoder.transform(table), tgt.encode(table)
    train_rows, val_rows = _split(len(X), y if tgt.classes is not None else None,
                                  validation_split, seed)
    widths = [encoder.width, *hidden]
    layers = [Standardize(encoder.width)]
    layers += hidden_stack(widths, activation, init, dropout)
    classify = tgt.task == "classification"
    layers.append(Dense(widths[-1], tgt.n_outputs, "softmax" if classify else "identity"))
    network = Sequential(layers, backend=backend, seed=seed, dtype=dtype)
    scale = network.layers[0]
    scale.adapt(X[train_rows])
    onehot = ~encoder.numeric_inputs()
    scale.mean[onehot], scale.std[onehot] = 0, 1              # one-hot inputs stay 0/1
    if classify:
        y_fit, loss = y, "cross_entropy"
    else:                                                     # train on the standardised y
        y_mean, y_std = y[train_rows].mean(axis=0), y[train_rows].std(axis=0)
        y_std[y_std == 0] = 1
        y_fit, loss = (y - y_mean) / y_std, "mse"
    validation = None if val_rows is None else (X[val_rows], y_fit[val_rows])
    model = TabularModel(network, encoder, tgt)
    model.history = network.fit(X[train_rows], y_fit[train_rows], loss=loss,
                                validation_data=validation, **fit_args)
    if not classify:
        _fold_target_scale(network.layers[-1], y_mean, y_std)
    if val_rows is not None:
        model.validation = scores(network, X[val_rows], y[val_rows], tgt.task)
    model.rows = {"train": len(train_rows), "held_out": 0 if val_rows is None else len(val_rows)}
    n_cat = sum(f.categories is not None for f in encoder.features)
    model.summary = [why, f"features: {len(encoder.features) - n_cat} numeric (standardised), "
                          f"{n_cat} categorical (one-hot) -> {encoder.width} inputs",
                     f"rows: {model.rows['train']} train, {model.rows['held_out']} held out"]
    return model


def load(path: str | os.PathLike, backend: str = "auto") -> TabularModel:
    """Read a model written by :meth:`TabularModel.save`."""
    network, tabular = io.read(path, backend)
    if tabular is None:
        raise ValueError(f"{os.fspath(path)!r} holds a fastnn model that was not trained "
                         f"from a table (no column encoding); read it with fastnn.load")
    try:
        return TabularModel.from_config(network, tabular)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{os.fspath(path)!r} has a malformed column encoding: "
                         f"{exc!r}") from None


def scores(network: Sequential, X: np.ndarray, y: np.ndarray, task: str) -> dict:
    """{"loss", "accuracy"} for classification (cross-entropy), {"loss", "r2"} for
    regression (fastnn's mse, ½ the mean squared error; R² averaged over outputs)."""
    if task == "classification":
        return network.evaluate(X, y, loss="cross_entropy")
    result = network.evaluate(X, y, loss="mse")
    result["r2"] = r2_score(y, network.predict(X))
    return result


def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination 1 − SS_res/SS_tot, averaged over output columns; a
    constant column scores 1 if predicted exactly, else 0 (as scikit-learn's r2_score)."""
    y, pred = np.asarray(y, np.float64).reshape(len(y), -1), \
        np.asarray(pred, np.float64).reshape(len(y), -1)
    ss_res = ((y - pred) ** 2).sum(axis=0)
    ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1 - ss_res / ss_tot, np.where(ss_res == 0, 1.0, 0.0))
    return float(r2.mean())


def _split(n: int, labels, fraction: float, seed: int):
    """(train rows, held-out rows or None): a seeded split, stratified by label when every
    class has at least two rows."""
    if isinstance(fraction, bool) or not 0 <= fraction < 1:
        raise ValueError(f"validation_split must be in [0, 1), got {fraction!r}")
    if fraction == 0:
        return np.arange(n), None
    from sklearn.model_selection import train_test_split

    stratify = labels if labels is not None and np.bincount(labels).min() >= 2 else None
    try:
        train_rows, val_rows = train_test_split(np.arange(n), test_size=fraction,
                                                random_state=seed, stratify=stratify)
    except ValueError as exc:          # too few rows for the split, or for its strata
        raise ValueError(f"cannot hold out validation_split={fraction} of {n} rows: "
                         f"{exc}") from None
    return np.sort(train_rows), np.sort(val_rows)


def _fold_target_scale(last: Dense, mean: np.ndarray, std: np.ndarray) -> None:
    """Make the last layer predict y = z·std + mean from a network trained on the
    standardised target: W ← W·std, b ← b·std + mean (per output)."""
    last.weight *= std.astype(last.weight.dtype)
    last.bias[...] = last.bias * std + mean
