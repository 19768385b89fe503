"""Losses: which kernel computes each, what targets it takes, and how accuracy is scored.

Output and loss convention
--------------------------
* ``"mse"``: ½(ŷ − y)² summed over outputs, averaged over the batch, on the network's output
  ŷ = f(z) of the last layer. y has shape (n, outputs), or (n,) when outputs = 1.
* ``"cross_entropy"``: softmax cross-entropy on the last layer's pre-activation z (logits),
  integer labels y (n,) in [0, outputs).
* ``"binary_cross_entropy"``: sigmoid cross-entropy on z, y (n,) or (n, outputs) in {0, 1}.

For the two cross-entropies the last Dense layer's activation must be ``"identity"`` (predict
returns logits, as with PyTorch's CrossEntropyLoss / BCEWithLogitsLoss) or ``"softmax"``
(resp. ``"sigmoid"``: predict returns probabilities). Either way training feeds z to the fused
loss kernel, whose gradient p − y is exact and stable; the activation is never applied twice.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import validation
from .kernels import BINARY_CROSS_ENTROPY, CROSS_ENTROPY, MSE


@dataclass(frozen=True)
class Loss:
    name: str
    kernel: str                 # name of the backend function computing loss and gradient
    on_logits: bool             # True: the kernel takes z, not f(z)
    last_activations: tuple     # activations the last layer may have with this loss
    code: int                   # the loss's code in a training plan (fastnn.kernels)

    def check_model(self, last_activation: str, n_outputs: int) -> None:
        """Raise ValueError if the model's output layer does not fit this loss."""
        if self.last_activations and last_activation not in self.last_activations:
            raise ValueError(
                f"loss={self.name!r} needs the last layer's activation to be one of "
                f"{', '.join(map(repr, self.last_activations))}, got {last_activation!r}")
        if self.name == "cross_entropy" and n_outputs < 2:
            raise ValueError("loss='cross_entropy' needs at least 2 outputs; "
                             "use 'binary_cross_entropy' for one output")

    def targets(self, y, n_outputs: int, dtype, name: str = "y") -> np.ndarray:
        """Validate targets for a model with n_outputs outputs; return the kernel's layout."""
        arr = validation.as_numeric_array(y, name)
        validation.check_finite(arr, name)
        if self.name == "cross_entropy":
            if arr.ndim != 1:
                raise ValueError(f"{name} must be 1-D integer class labels for "
                                 f"loss='cross_entropy', got shape {arr.shape}")
            labels = arr.astype(np.int64, copy=False)     # int64 y: no copy
            if arr.dtype.kind == "f" and not np.array_equal(labels, arr):
                raise ValueError(f"{name} holds non-integer class labels "
                                 f"(e.g. {arr[labels != arr][0]})")
            lo, hi = labels.min(), labels.max()
            if lo < 0 or hi >= n_outputs:
                bad = lo if lo < 0 else hi
                raise ValueError(f"{name} holds class label {bad} but labels must be in "
                                 f"[0, {n_outputs}) for a model with {n_outputs} outputs")
            return labels
        if arr.ndim == 1 and n_outputs == 1:
            arr = arr.reshape(-1, 1)
        if arr.ndim != 2 or arr.shape[1] != n_outputs:
            raise ValueError(f"{name} has shape {arr.shape} but the model outputs {n_outputs} "
                             f"value(s) per sample; expected ({len(arr)}, {n_outputs})")
        if self.name == "binary_cross_entropy" and not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must hold only 0 and 1 for loss='binary_cross_entropy'")
        return validation.as_float(arr, dtype, name)

    def correct(self, out: np.ndarray, y: np.ndarray, probabilities: bool) -> np.ndarray | None:
        """Per row, whether the prediction is right, or None when accuracy does not apply
        (mse). ``out`` is the last layer's output: logits, or probabilities when
        ``probabilities``."""
        if self.name == "cross_entropy":
            return out.argmax(axis=1) == y
        if self.name == "binary_cross_entropy":
            threshold = 0.5 if probabilities else 0.0
            return ((out > threshold) == (y > 0.5)).all(axis=1)
        return None

    def n_correct(self, out: np.ndarray, y: np.ndarray, probabilities: bool) -> int | None:
        """Correct predictions in a batch, or None when accuracy does not apply (mse)."""
        right = self.correct(out, y, probabilities)
        return None if right is None else int(right.sum())

    def class_weights(self, y: np.ndarray, class_weight, n_outputs: int) -> np.ndarray:
        """Per-row weights (float64) from ``class_weight``: a dict {label: weight} (labels
        not named weigh 1) or "balanced", n / (n_classes · count) over the classes present,
        as scikit-learn computes it. For the cross-entropy losses with one label per row."""
        if self.name == "mse":
            raise ValueError("class_weight applies to the cross-entropy losses only, not "
                             "loss='mse'; use sample_weight")
        if self.name == "binary_cross_entropy" and n_outputs != 1:
            raise ValueError(f"class_weight needs one label per row; with "
                             f"loss='binary_cross_entropy' and {n_outputs} outputs use "
                             f"sample_weight")
        labels = y.reshape(-1).astype(np.int64)
        classes = range(n_outputs) if self.name == "cross_entropy" else (0, 1)
        if isinstance(class_weight, str):
            validation.choice(class_weight, "class_weight", ("balanced",))
            present, counts = np.unique(labels, return_counts=True)
            table = dict(zip(present.tolist(), len(labels) / (len(present) * counts)))
        elif isinstance(class_weight, dict):
            table = {}
            for label, weight in class_weight.items():
                if isinstance(label, bool) or label not in classes:
                    raise ValueError(f"class_weight names label {label!r}, which is not among "
                                     f"the classes {list(classes)}")
                weight = validation.positive_float(weight, f"class_weight[{label!r}]",
                                                   allow_zero=True)
                table[int(label)] = weight
        else:
            raise TypeError(f"class_weight must be a dict {{label: weight}} or 'balanced', got "
                            f"{type(class_weight).__name__}")
        lookup = np.ones(len(classes))
        for label, weight in table.items():
            lookup[label] = weight
        return lookup[labels]


LOSSES = {
    "mse": Loss("mse", "mse", on_logits=False, last_activations=(), code=MSE),
    "cross_entropy": Loss("cross_entropy", "softmax_cross_entropy", on_logits=True,
                          last_activations=("identity", "softmax"), code=CROSS_ENTROPY),
    "binary_cross_entropy": Loss("binary_cross_entropy", "sigmoid_binary_cross_entropy",
                                 on_logits=True, last_activations=("identity", "sigmoid"),
                                 code=BINARY_CROSS_ENTROPY),
}


def get(name) -> Loss:
    return LOSSES[validation.choice(name, "loss", tuple(LOSSES))]
