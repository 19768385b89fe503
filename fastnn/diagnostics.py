"""Gradient diagnostics: how much of the loss's gradient reaches each layer.

For one batch, :func:`gradient_norms` reports, for every Dense layer in forward order (those
inside Residual blocks included), the norm of its weight gradient ∂L/∂W and the norm of the
backpropagated signal ∂L/∂a arriving at its output. In a deep sigmoid network both shrink by a
roughly constant factor per layer on the way back to the input — vanishing gradients;
:func:`decay_factor` fits that factor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .layers import Dense, Layer, Residual

if TYPE_CHECKING:
    from .model import Sequential


@dataclass(frozen=True)
class GradientNorms:
    """Per-Dense-layer gradient norms of one batch, in forward order (input layer first).

    ``weight_norms[l]`` is the Frobenius norm of ∂L/∂W of layer l; ``signal_norms[l]`` that of
    ∂L/∂a (batch, out) at its output (for the last layer, ∂L/∂z of the logits when the loss
    takes them); ``layer_names[l]`` says where the layer sits, e.g. ``"layers[3].block[0]"``.
    """

    layer_names: tuple[str, ...]
    weight_norms: np.ndarray
    signal_norms: np.ndarray
    loss: float

    @property
    def first_to_last(self) -> float:
        """‖∂L/∂W‖ of the first layer divided by that of the last: ≪ 1 when gradients vanish."""
        return float(self.weight_norms[0] / self.weight_norms[-1])

    def decay_factor(self) -> float:
        """The per-layer factor fitted to the weight-gradient norms (see :func:`decay_factor`)."""
        return decay_factor(self.weight_norms)


def dense_layers(model: Sequential) -> list[tuple[str, Dense]]:
    """(name, layer) of every Dense layer of ``model`` in forward order, inside blocks too."""
    found = []

    def walk(layers: list[Layer], prefix: str) -> None:
        for i, layer in enumerate(layers):
            name = f"{prefix}[{i}]"
            if isinstance(layer, Dense):
                found.append((name, layer))
            elif isinstance(layer, Residual):
                walk(layer.block, f"{name}.block")

    walk(model.layers, "layers")
    return found


def probe_rows(n_samples: int, size: int) -> np.ndarray:
    """Indices of ``size`` rows spread evenly over ``n_samples``: a fixed batch to measure on,
    drawn without a random generator so measuring never changes a training run's shuffling."""
    return np.linspace(0, n_samples - 1, min(size, n_samples)).round().astype(np.intp)


def _norm(a: np.ndarray) -> float:
    """Frobenius norm accumulated in float64: squares of float32 gradients below ~1e-19 would
    underflow to zero, and vanishing gradients get that small."""
    return float(np.sqrt(np.square(a, dtype=np.float64).sum()))


class _SignalRecorder:
    """Stands in for a backend's kernel module: delegates everything, but notes ‖dA‖ as each
    dense_backward starts (the kernel overwrites dA with dZ, so it must be read before)."""

    def __init__(self, kernels):
        self._kernels = kernels
        self.norms: list[float] = []

    def __getattr__(self, name):
        return getattr(self._kernels, name)

    def dense_backward(self, dA, X, W, A, act, dX, dW, db, Z=None):
        self.norms.append(_norm(dA))
        self._kernels.dense_backward(dA, X, W, A, act, dX, dW, db, Z)


def gradient_norms(model: Sequential, X, y, loss: str) -> GradientNorms:
    """Gradient norms per Dense layer for (X, y) as one batch, through ``model``'s backend.

    Runs one training-mode forward and backward pass (as :meth:`Sequential.compute_gradients`,
    which fills ``model.gradients()``) with the backend's own kernels, noting the signal that
    enters each layer's backward. Parameters and BatchNorm running statistics are left as they
    were, so measuring during training does not change the training.
    """
    layers = dense_layers(model)
    recorder = _SignalRecorder(model._k)
    state = model._state.copy()
    kernels, model._k = model._k, recorder
    try:
        value = model.compute_gradients(X, y, loss)
    finally:
        model._k = kernels
        model._state[...] = state
    if len(recorder.norms) != len(layers):
        raise RuntimeError(f"expected {len(layers)} dense backward passes, saw "
                           f"{len(recorder.norms)}")
    return GradientNorms(
        layer_names=tuple(name for name, _ in layers),
        weight_norms=np.array([_norm(layer.weight_grad) for _, layer in layers]),
        signal_norms=np.array(recorder.norms[::-1]),    # recorded output layer first
        loss=value,
    )


def decay_factor(norms) -> float:
    """Per-layer factor r with norms[l] ≈ C · r^(L−1−l) for layers l = 0 … L−1 (input first).

    r is exp of the least-squares slope of log ‖·‖ against depth counted from the output: the
    factor by which the gradient shrinks (r < 1) or grows (r > 1) per layer on its way back.
    """
    norms = np.asarray(norms, dtype=np.float64)
    if norms.ndim != 1 or len(norms) < 2:
        raise ValueError(f"norms must be a 1-D sequence of at least 2 values, got shape "
                         f"{norms.shape}")
    if not (np.isfinite(norms) & (norms > 0)).all():
        raise ValueError("norms must be positive and finite to fit a decay factor; a zero "
                         "means the gradient underflowed (measure in float64)")
    depth_from_output = np.arange(len(norms))[::-1]
    slope = np.polyfit(depth_from_output, np.log(norms), 1)[0]
    return float(np.exp(slope))
