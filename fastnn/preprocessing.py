"""Input normalisation inside the model: the :class:`Standardize` layer.

The per-feature mean and standard deviation are model *state* (the model's flat ``_state``
buffer, like BatchNorm's running statistics): saved with the model, exported to ONNX, never
trained. ``adapt(X)`` sets them from data.
"""
from __future__ import annotations

import numpy as np

from . import validation
from .layers import Layer
from .rowblocks import row_blocks


class Standardize(Layer):
    """y = (x − mean) / std per feature, with mean and std set by :meth:`adapt`.

    Until adapted it is the identity (mean 0, std 1). A constant feature (std 0) is only
    centred: its std is stored as 1, so nothing is divided by 0 (scikit-learn's
    ``StandardScaler`` does the same). The std is the population one (ddof = 0).
    ``adapt`` may be called before the layer is part of a model; the model then starts
    from those statistics.

    >>> scale = fastnn.Standardize(4)
    >>> scale.adapt(X_train)
    >>> model = fastnn.Sequential([scale, fastnn.Dense(4, 16, "relu"), fastnn.Dense(16, 3)])
    """

    def __init__(self, num_features: int):
        super().__init__()
        self.in_features = self.out_features = validation.positive_int(num_features,
                                                                        "num_features")
        self.n_state = 2 * self.in_features              # mean then std; no parameters
        self._pending: tuple[np.ndarray, np.ndarray] | None = None

    def _bind(self, params, grads, state):
        super()._bind(params, grads, state)
        n = self.in_features
        self.mean, self.std = state[:n], state[n:]

    def _reset_parameters(self, rng):
        mean, std = self._pending if self._pending is not None else (0.0, 1.0)
        self.mean[...] = mean
        self.std[...] = std
        self._pending = None

    def adapt(self, X, rows: np.ndarray | None = None, reduce=None) -> Standardize:
        """Set mean and std from the rows of X (samples, num_features), or from its rows
        ``rows`` (indices) only; return self.

        The statistics are computed in float64 over blocks of rows, so no float64 copy of X
        is made, and stored in the model's dtype. ``reduce(values, op)`` (op "sum", "min" or
        "max") combines each partial result over processes, so that X is one shard of the
        rows (``fit(distributed=...)``); None: X holds all of them.
        """
        X = validation.features(X, self.in_features, None)
        mean, std = _mean_std(X, rows, reduce or _alone)
        if self._bound:
            self.mean[...] = mean
            self.std[...] = std
        else:
            self._pending = (mean, std)
        return self

    def _workspace(self, batch, dtype):
        return {"out": np.empty((batch, self.in_features), dtype),
                "dX": np.empty((batch, self.in_features), dtype)}

    def _forward(self, k, X, ws, training, logits=False):
        np.subtract(X, self.mean, out=ws["out"])         # y = (x − μ) / s
        ws["out"] /= self.std
        return ws["out"]

    def _backward(self, k, dOut, ws, need_dX):
        if not need_dX:
            return None
        np.divide(dOut, self.std, out=ws["dX"])          # ∂L/∂x = ∂L/∂y / s
        return ws["dX"]

    def get_config(self):
        return {"type": "Standardize", "num_features": self.in_features}

    def __repr__(self):
        return f"Standardize({self.in_features})"


def _alone(values: np.ndarray, op: str) -> np.ndarray:
    """The reduction over one process: the values themselves."""
    return values


def _mean_std(X: np.ndarray, rows, reduce) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and population std (std 1 where the feature is constant) of X, or of
    X[rows], in float64: two passes (Σx, then Σ(x − mean)²) over blocks of rows, each partial
    result combined by ``reduce`` (see :meth:`Standardize.adapt`)."""
    width = X.shape[1]
    total, lo, hi = np.zeros(width), np.full(width, np.inf), np.full(width, -np.inf)
    for _, block in row_blocks(X, rows):
        total += block.sum(axis=0, dtype=np.float64)
        np.minimum(lo, block.min(axis=0), out=lo)
        np.maximum(hi, block.max(axis=0), out=hi)
    n = reduce(np.array([len(X) if rows is None else len(rows)], np.float64), "sum")[0]
    mean, squares = reduce(total, "sum") / n, np.zeros(width)
    for _, block in row_blocks(X, rows):
        centred = block - mean
        centred *= centred
        squares += centred.sum(axis=0)
    std = np.sqrt(reduce(squares, "sum") / n)
    std[reduce(lo, "min") == reduce(hi, "max")] = 1.0   # constant feature: centred only
    return mean, std


def leading_standardize(model) -> Standardize:
    """The model's first layer, which ``fit(..., standardize=True)`` adapts; ValueError when
    it is not a :class:`Standardize`."""
    first = model.layers[0]
    if not isinstance(first, Standardize):
        raise ValueError(f"standardize=True needs fastnn.Standardize({model.in_features}) as "
                         f"the model's first layer, but the first layer is {first!r}")
    return first


def adapt_standardize(model, X) -> None:
    """Adapt the model's leading :class:`Standardize` layer on the rows X (what
    ``fit(..., standardize=True)`` does with its training rows); ValueError without one."""
    leading_standardize(model).adapt(X)
