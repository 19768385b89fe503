"""scikit-learn hyper-parameters turned into fastnn objects: the network, its initial weights,
the optimizer and the weight decay that stands for ``alpha``.

Used by :mod:`fastnn.sklearn`; nothing here knows about estimators, only about the numbers
their parameters hold.
"""
from __future__ import annotations

import numpy as np

from .kernels import ACTIVATIONS
from .layers import BatchNorm, Dense, Layer, Residual
from .model import Sequential
from .optimizers import SGD, Adam, AdamW, Optimizer, RMSprop
from .training import sum_of_squares

#: hidden activations an estimator accepts: scikit-learn's names ("logistic" is fastnn's
#: "sigmoid") and every fastnn activation except softmax, which is not a hidden activation
HIDDEN_ACTIVATIONS = ("identity", "logistic", "tanh", "relu",
                      *(a for a in ACTIVATIONS if a not in ("identity", "tanh", "relu",
                                                            "softmax")))
SOLVERS = ("sgd", "adam", "adamw", "rmsprop")


def fastnn_activation(name: str) -> str:
    """scikit-learn's activation name -> fastnn's ("logistic" is "sigmoid")."""
    return "sigmoid" if name == "logistic" else name


def build_network(n_features: int, hidden: list[int], n_outputs: int, activation: str,
                  batch_norm: bool, residual: bool, dropout: float, backend: str,
                  seed: int, dtype: str) -> Sequential:
    """The estimator's network: per hidden layer Dense(activation), then BatchNorm if
    ``batch_norm``, then Dropout if ``dropout`` > 0; with ``residual`` each hidden layer after
    the first whose width equals the previous one's becomes Residual([that block]). The
    output layer is linear: the estimators train on logits (cross-entropies) or on the value
    itself (squared error) and apply softmax/sigmoid when they predict probabilities."""
    act = fastnn_activation(activation)
    layers: list[Layer] = []
    width = n_features
    for i, h in enumerate(hidden):
        block: list[Layer] = [Dense(width, h, act)]
        if batch_norm:
            block.append(BatchNorm(h))
        if dropout > 0:
            from .layers import Dropout          # fastnn.Dropout (issue 12)
            block.append(Dropout(dropout))
        if residual and i > 0 and h == width:
            layers.append(Residual(block))
        else:
            layers.extend(block)
        width = h
    layers.append(Dense(width, n_outputs, "identity"))
    return Sequential(layers, backend=backend, seed=seed, dtype=dtype)


def dense_layers(layers) -> list[Dense]:
    """The Dense layers of a model, in forward order, looking inside Residual blocks."""
    found: list[Dense] = []
    for layer in layers:
        if isinstance(layer, Dense):
            found.append(layer)
        elif isinstance(layer, Residual):
            found.extend(dense_layers(layer.block))
    return found


def initial_weights(units: list[int], activation: str,
                    random_state: np.random.RandomState) -> list[tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's MLP initialisation for layer widths ``units``, drawn from
    ``random_state`` in scikit-learn's order (layer by layer, W then b), in float64: W and b
    ~ U(±√(f/(fan_in + fan_out))) with f = 2 for logistic and 6 otherwise (Glorot & Bengio).
    Same random_state, same initial weights as scikit-learn's MLPClassifier/MLPRegressor."""
    factor = 2.0 if activation == "logistic" else 6.0
    drawn = []
    for fan_in, fan_out in zip(units[:-1], units[1:]):
        bound = np.sqrt(factor / (fan_in + fan_out))
        drawn.append((random_state.uniform(-bound, bound, (fan_in, fan_out)),
                      random_state.uniform(-bound, bound, fan_out)))
    return drawn


def set_dense_weights(model: Sequential, weights: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Write (W, b) pairs into the model's Dense layers, in forward order."""
    for layer, (W, b) in zip(dense_layers(model.layers), weights, strict=True):
        layer.weight[...] = W
        layer.bias[...] = b


def weight_decay(alpha: float, batch_size: int, mean_sample_weight: float = 1.0) -> float:
    """The fastnn weight decay λ that stands for scikit-learn's ``alpha``.

    scikit-learn adds ½·alpha·‖W‖²/s to each minibatch's loss, s the sum of the batch's
    sample weights (its row count without weights), so its gradient gains alpha·W/s on the
    weights (not the biases). fastnn's weight decay adds λ·w to the gradient of every
    parameter, so λ = alpha/(batch_size · mean sample weight). That equals scikit-learn's
    term exactly on every full, unweighted batch (or on one full batch, weighted); a last,
    shorter batch gets alpha/batch_size where scikit-learn gives alpha/rows; and biases
    and BatchNorm's γ, β are decayed too, where scikit-learn decays only the weights.
    """
    return float(alpha) / (batch_size * mean_sample_weight)


def make_optimizer(solver: str, learning_rate_init: float, decay: float, momentum: float,
                   nesterovs_momentum: bool, beta_1: float, beta_2: float,
                   epsilon: float) -> Optimizer:
    """The fastnn optimizer for ``solver``, with weight decay λ = ``decay``:

    * "sgd": SGD(lr, momentum, nesterov=nesterovs_momentum and momentum > 0). PyTorch's form
      v ← μv + g, w ← w − ηv equals scikit-learn's v ← μv − ηg, w ← w + v while η is
      constant; when η changes (invscaling, adaptive) scikit-learn's velocity keeps the
      steps taken at the old rate and fastnn's is rescaled by the new one.
    * "adam": Adam(lr, β₁, β₂, ε): PyTorch's rule, η·m̂/(√v̂ + ε); scikit-learn's puts ε
      outside the bias correction, η·m̂/(√v̂ + ε/√(1 − β₂ᵗ)) (a difference of order ε).
    * "adamw": AdamW with decoupled decay w ← w(1 − ηλ), same λ.
    * "rmsprop": RMSprop(lr, α = beta_2, ε = epsilon), no momentum.
    """
    if solver == "sgd":
        return SGD(learning_rate_init, momentum=momentum,
                   nesterov=bool(nesterovs_momentum and momentum > 0), weight_decay=decay)
    if solver == "adam":
        return Adam(learning_rate_init, beta_1, beta_2, epsilon, weight_decay=decay)
    if solver == "adamw":
        return AdamW(learning_rate_init, beta_1, beta_2, epsilon, weight_decay=decay)
    if solver == "rmsprop":
        return RMSprop(learning_rate_init, alpha=beta_2, eps=epsilon, weight_decay=decay)
    raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")


def squared_weights(model: Sequential) -> float:
    """Σ‖W‖² over the Dense weights (not the biases), in float64: scikit-learn's L2 penalty
    sum, taken every epoch (without BLAS: :func:`fastnn.training.sum_of_squares`)."""
    return float(sum(sum_of_squares(layer.weight.ravel())
                     for layer in dense_layers(model.layers)))
