"""Layers: Dense, BatchNorm, Residual and Dropout.

A layer owns no memory of its own. When a model is built it hands each layer views into the
model's flat parameter and gradient buffers (``_bind``); a layer's forward and backward passes
are backend kernel calls writing into workspace buffers allocated once per batch size
(``_workspace``). So the Python here runs once per layer per batch, never per element.
"""
from __future__ import annotations

import math

import numpy as np

from . import validation
from .kernels import ACTIVATIONS, IDENTITY, NEEDS_PREACTIVATION, dropout_key

#: init name -> (distribution, fan): weights ~ U(±√(3·gain/fan)) or N(0, gain/fan);
#: "normal" is N(0, NORMAL_STD²) whatever the fan: the small random weights of early networks
INITS = {
    "xavier_uniform": "uniform",
    "xavier_normal": "normal",
    "he_uniform": "uniform",
    "he_normal": "normal",
    "lecun_normal": "normal",
    "normal": "normal",
}
NORMAL_STD = 0.01
#: activation -> its default init: He for the rectifier family, LeCun normal (variance 1/fan_in)
#: for SELU, whose self-normalisation assumes it; Xavier uniform otherwise
DEFAULT_INITS = {"relu": "he_normal", "leaky_relu": "he_normal", "elu": "he_normal",
                 "gelu": "he_normal", "gelu_tanh": "he_normal", "silu": "he_normal",
                 "selu": "lecun_normal"}
_INIT_ALIASES = {"xavier": "xavier_uniform", "he": "he_normal"}


class Layer:
    """Base class of layers. Subclasses set in/out widths and the sizes of their buffers."""

    in_features: int
    out_features: int
    n_params = 0     # entries in the model's parameter (and gradient) buffer
    n_state = 0      # entries in the model's non-trained state buffer (running statistics)

    def __init__(self):
        self._bound = False

    def _bind(self, params: np.ndarray, grads: np.ndarray, state: np.ndarray) -> None:
        """Take views of exactly n_params / n_params / n_state entries of the model's buffers."""
        if self._bound:
            raise ValueError(f"{self!r} already belongs to a model; create a new layer")
        self._bound = True

    def _reset_parameters(self, rng: np.random.Generator) -> None:
        pass

    def _workspace(self, batch: int, dtype) -> dict:
        return {}

    def _forward(self, k, X, ws, training: bool, logits: bool = False) -> np.ndarray:
        raise NotImplementedError

    def _backward(self, k, dOut, ws, need_dX: bool):
        raise NotImplementedError

    def get_config(self) -> dict:
        raise NotImplementedError

    def _require_bound(self):
        if not self._bound:
            raise RuntimeError(f"{self!r} has no parameters until it is part of a model")


class Dense(Layer):
    """Fully connected layer a = f(x·W + b) with W (in, out) and b (out,).

    ``init`` is one of "xavier_uniform", "xavier_normal", "he_uniform", "he_normal",
    "lecun_normal" or "normal" (N(0, 0.01²) regardless of the widths: in deep sigmoid networks
    gradients vanish); by default He (normal) for relu/leaky_relu/elu/gelu/gelu_tanh/silu,
    LeCun normal for selu and Xavier (uniform) otherwise. The bias starts at zero.
    Activations: identity, sigmoid, tanh, relu, leaky_relu (slope 0.01), softmax, elu (α = 1),
    selu (PyTorch's λ, α), softplus (β = 1, linear above 20), gelu (the exact z·Φ(z)),
    gelu_tanh (the tanh approximation) and silu (z·σ(z)), each as PyTorch defines it. GELU
    and SiLU layers keep their pre-activation z for the backward pass (batch × out more
    memory); the others do not.
    """

    def __init__(self, in_features: int, out_features: int, activation: str = "identity",
                 init: str | None = None):
        super().__init__()
        self.in_features = validation.positive_int(in_features, "in_features")
        self.out_features = validation.positive_int(out_features, "out_features")
        self.activation = validation.choice(activation, "activation", tuple(ACTIVATIONS))
        if init is None:
            init = DEFAULT_INITS.get(activation, "xavier_uniform")
        init = _INIT_ALIASES.get(init, init)
        self.init = validation.choice(init, "init", tuple(INITS))
        self._code = ACTIVATIONS[activation]
        self.n_params = (self.in_features + 1) * self.out_features

    def _bind(self, params, grads, state):
        super()._bind(params, grads, state)
        n_w = self.in_features * self.out_features
        shape = (self.in_features, self.out_features)
        self._W, self._b = params[:n_w].reshape(shape), params[n_w:]
        self._dW, self._db = grads[:n_w].reshape(shape), grads[n_w:]

    def _reset_parameters(self, rng):
        fan_in, fan_out = self.in_features, self.out_features
        if self.init == "normal":
            variance = NORMAL_STD ** 2
        elif self.init.startswith("he"):
            variance = 2 / fan_in
        elif self.init == "lecun_normal":
            variance = 1 / fan_in
        else:
            variance = 2 / (fan_in + fan_out)
        if INITS[self.init] == "uniform":
            bound = math.sqrt(3 * variance)
            self._W[...] = rng.uniform(-bound, bound, self._W.shape)
        else:
            self._W[...] = rng.normal(0.0, math.sqrt(variance), self._W.shape)
        self._b[...] = 0

    @property
    def weight(self) -> np.ndarray:
        """W (in, out): a writable view into the model's parameter buffer."""
        self._require_bound()
        return self._W

    @weight.setter
    def weight(self, value):
        self.weight[...] = value

    @property
    def bias(self) -> np.ndarray:
        """b (out,): a writable view into the model's parameter buffer."""
        self._require_bound()
        return self._b

    @bias.setter
    def bias(self, value):
        self.bias[...] = value

    @property
    def weight_grad(self) -> np.ndarray:
        """∂L/∂W from the last backward pass (a view into the model's gradient buffer)."""
        self._require_bound()
        return self._dW

    @property
    def bias_grad(self) -> np.ndarray:
        """∂L/∂b from the last backward pass."""
        self._require_bound()
        return self._db

    @property
    def keeps_preactivation(self) -> bool:
        """Whether the backward pass needs z (GELU, SiLU), so the forward pass keeps it."""
        return self._code in NEEDS_PREACTIVATION

    def _workspace(self, batch, dtype):
        ws = {"out": np.empty((batch, self.out_features), dtype),
              "dX": np.empty((batch, self.in_features), dtype)}
        if self.keeps_preactivation:
            ws["Z"] = np.empty((batch, self.out_features), dtype)
        return ws

    def _forward(self, k, X, ws, training, logits=False):
        ws["X"], ws["code"] = X, IDENTITY if logits else self._code  # saved for backward
        k.dense_forward(X, self._W, self._b, ws["code"], ws["out"], ws.get("Z"))
        return ws["out"]

    def _backward(self, k, dOut, ws, need_dX):
        dX = ws["dX"] if need_dX else None
        k.dense_backward(dOut, ws["X"], self._W, ws["out"], ws["code"], dX, self._dW, self._db,
                         ws.get("Z"))
        return dX

    def get_config(self):
        return {"type": "Dense", "in_features": self.in_features,
                "out_features": self.out_features, "activation": self.activation,
                "init": self.init}

    def __repr__(self):
        return f"Dense({self.in_features}, {self.out_features}, activation={self.activation!r})"


class BatchNorm(Layer):
    """Batch normalisation over the batch, per feature: y = γ (x − μ)/√(σ² + ε) + β.

    Training uses the batch's statistics and updates running ones with ``momentum``;
    prediction uses the running statistics. γ starts at 1 and β at 0.

    In data-parallel training (``fit(distributed=...)``) the statistics are those of the
    global minibatch (SyncBatchNorm): ``_sync`` is then an object with ``rows`` (the global
    minibatch's rows) and ``sum(values)`` (the float64 sum over every process), and each
    training pass reduces Σx, then Σ(x − μ)² forward and (Σ∂L/∂y, Σ∂L/∂y·x̂) backward. It
    is None otherwise.
    """

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.in_features = self.out_features = validation.positive_int(num_features,
                                                                        "num_features")
        self.momentum = validation.positive_float(momentum, "momentum")
        if self.momentum > 1:
            raise ValueError(f"momentum must be in (0, 1], got {self.momentum}")
        self.eps = validation.positive_float(eps, "eps")
        self.n_params = self.n_state = 2 * self.in_features
        self._sync = None

    def _bind(self, params, grads, state):
        super()._bind(params, grads, state)
        n = self.in_features
        self.gamma, self.beta = params[:n], params[n:]
        self._dgamma, self._dbeta = grads[:n], grads[n:]
        self.running_mean, self.running_var = state[:n], state[n:]

    def _reset_parameters(self, rng):
        self.gamma[...] = 1
        self.beta[...] = 0
        self.running_mean[...] = 0
        self.running_var[...] = 1

    def _workspace(self, batch, dtype):
        n = self.in_features
        return {"out": np.empty((batch, n), dtype), "xhat": np.empty((batch, n), dtype),
                "inv_std": np.empty(n, dtype), "dX": np.empty((batch, n), dtype)}

    def _forward(self, k, X, ws, training, logits=False):
        if training and self._sync is not None:
            return self._synced_forward(k, X, ws)
        k.batchnorm_forward(X, self.gamma, self.beta, self.running_mean, self.running_var,
                            self.momentum, self.eps, training, ws["out"], ws["xhat"],
                            ws["inv_std"])
        return ws["out"]

    def _backward(self, k, dOut, ws, need_dX):
        if self._sync is not None:
            return self._synced_backward(dOut, ws)
        k.batchnorm_backward(dOut, ws["xhat"], ws["inv_std"], self.gamma, ws["dX"],
                             self._dgamma, self._dbeta)
        return ws["dX"]

    def _synced_forward(self, k, X, ws):
        """Training forward pass with the global minibatch's μ and σ² (two-pass, float64);
        X may have no rows (this process joins the sums). The normalisation itself is the
        backend's kernel in evaluation mode, given those statistics."""
        sync, n = self._sync, self._sync.rows
        X64 = X.astype(np.float64)
        mean = sync.sum(X64.sum(axis=0)) / n
        var = sync.sum(((X64 - mean) ** 2).sum(axis=0)) / n
        m = self.momentum
        self.running_mean[...] = (1 - m) * self.running_mean + m * mean
        self.running_var[...] = (1 - m) * self.running_var + m * var * (n / max(n - 1, 1))
        if len(X):
            k.batchnorm_forward(X, self.gamma, self.beta, mean.astype(X.dtype),
                                var.astype(X.dtype), m, self.eps, False, ws["out"],
                                ws["xhat"], ws["inv_std"])
        return ws["out"]

    def _synced_backward(self, dOut, ws):
        """∂L/∂x = γ/(Nσ)·(N·dy − Σdy − x̂·Σdy·x̂) with the sums over the global minibatch of N
        rows (dy: each process's rows' share of the global loss's gradient); ∂L/∂γ and ∂L/∂β
        are this process's shares, which the gradient Allreduce adds."""
        n, width = self._sync.rows, self.in_features
        dy, xhat = dOut.astype(np.float64), ws["xhat"].astype(np.float64)
        local = np.concatenate([dy.sum(axis=0), (dy * xhat).sum(axis=0)])
        self._dbeta[...], self._dgamma[...] = local[:width], local[width:]
        total = self._sync.sum(local)
        scale = self.gamma.astype(np.float64) * ws["inv_std"] / n
        ws["dX"][...] = scale * (n * dy - total[:width] - xhat * total[width:])
        return ws["dX"]

    def get_config(self):
        return {"type": "BatchNorm", "num_features": self.in_features,
                "momentum": self.momentum, "eps": self.eps}

    def __repr__(self):
        return f"BatchNorm({self.in_features})"


class Residual(Layer):
    """Skip connection: output = x + block(x). ``block`` is a layer or a list of layers whose
    widths chain from n back to n."""

    def __init__(self, block):
        super().__init__()
        self.block = list(block) if isinstance(block, (list, tuple)) else [block]
        if not self.block or not all(isinstance(l, Layer) for l in self.block):
            raise TypeError("block must be a layer or a non-empty list of layers")
        check_chain(self.block, "Residual block")
        self.in_features = self.block[0].in_features
        self.out_features = self.block[-1].out_features
        if self.in_features != self.out_features:
            raise ValueError(f"Residual block maps {self.in_features} features to "
                             f"{self.out_features}; x + block(x) needs them equal")
        self.n_params = sum(l.n_params for l in self.block)
        self.n_state = sum(l.n_state for l in self.block)

    def _bind(self, params, grads, state):
        super()._bind(params, grads, state)
        bind_chain(self.block, params, grads, state)

    def _reset_parameters(self, rng):
        for layer in self.block:
            layer._reset_parameters(rng)

    def _workspace(self, batch, dtype):
        return {"out": np.empty((batch, self.out_features), dtype),
                "skip": np.empty((batch, self.out_features), dtype),
                "block": [l._workspace(batch, dtype) for l in self.block]}

    def _forward(self, k, X, ws, training, logits=False):
        h = X
        for layer, lws in zip(self.block, ws["block"]):
            h = layer._forward(k, h, lws, training)
        np.add(X, h, out=ws["out"])                      # y = x + block(x)
        return ws["out"]

    def _backward(self, k, dOut, ws, need_dX):
        np.copyto(ws["skip"], dOut)                      # the block's backward overwrites dOut
        d = dOut
        for layer, lws in zip(reversed(self.block), reversed(ws["block"])):
            d = layer._backward(k, d, lws, need_dX=True)
        d += ws["skip"]                                  # ∂L/∂x = ∂L/∂y + ∂L/∂y · ∂block/∂x
        return d

    def get_config(self):
        return {"type": "Residual", "block": [l.get_config() for l in self.block]}

    def __repr__(self):
        return f"Residual([{', '.join(map(repr, self.block))}])"


class Dropout(Layer):
    """Inverted dropout: in training each unit is zeroed with probability ``p`` and the
    survivors are scaled by 1/(1 − p), so the expected output equals the input; in predict and
    evaluate it is the identity. As ``torch.nn.Dropout``.

    The masks come from the model's seed and its count of training steps, through a
    counter-based hash (``fastnn.kernels.dropout_key``) that every backend computes the same
    way: the same seed and data order give the same run, on one backend and across backends.
    ``compute_gradients`` uses the masks of the model's next training step, so repeated calls
    see the same masks (finite-difference checks rely on it). ``p = 0`` is the identity.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        p = validation.positive_float(p, "p", allow_zero=True)
        if p >= 1:
            raise ValueError(f"p must be in [0, 1) (the probability of dropping a unit), "
                             f"got {p}")
        self.p = p
        self.in_features = self.out_features = None       # its neighbours' (check_chain)
        #: set by the model: its seed, its training-step counter and this layer's stream
        self._seed, self._steps, self.stream = 0, None, 0
        #: data-parallel training: the numbers of this process's rows in the whole minibatch
        #: (None: the rows are the minibatch), so every row draws its single-process mask
        self._rows = None

    def _workspace(self, batch, dtype):
        return {"out": np.empty((batch, self.out_features), dtype),
                "dX": np.empty((batch, self.out_features), dtype)}

    def _key(self) -> int:
        return dropout_key(self._seed, int(self._steps[0]), self.stream)

    def _forward(self, k, X, ws, training, logits=False):
        ws["training"] = training and self.p > 0
        if not ws["training"]:
            return X
        k.dropout(X, self.p, self._key(), ws["out"], self._rows)
        return ws["out"]

    def _backward(self, k, dOut, ws, need_dX):
        if not ws["training"]:
            return dOut
        k.dropout(dOut, self.p, self._key(), ws["dX"], self._rows)   # ∂L/∂y ⊙ mask / (1 − p)
        return ws["dX"]

    def get_config(self):
        return {"type": "Dropout", "p": self.p}

    def __repr__(self):
        return f"Dropout(p={self.p})"


def layers_of(layers, kind: type) -> list:
    """The layers of type ``kind`` in forward order, Residual blocks included (for Dropout:
    the order of their streams)."""
    found = []
    for layer in layers:
        if isinstance(layer, kind):
            found.append(layer)
        elif isinstance(layer, Residual):
            found += layers_of(layer.block, kind)
    return found


def _infer_widths(layers, what: str) -> None:
    """Give each Dropout its width: the previous layer's output, or for a leading Dropout the
    next sized layer's input."""
    for i, layer in enumerate(layers):
        if not isinstance(layer, Dropout) or layer.in_features is not None:
            continue
        if i > 0:
            width = layers[i - 1].out_features
        else:
            width = next((l.in_features for l in layers if l.in_features is not None), None)
        if width is None:
            raise ValueError(f"{what}: the width of {layer!r} cannot be inferred; put it "
                             f"next to a sized layer such as Dense")
        layer.in_features = layer.out_features = width


def hidden_stack(widths, activation: str, init: str | None = None,
                 dropout: float = 0.0) -> list[Layer]:
    """Dense layers through ``widths`` (in, hidden..., last hidden), each followed by
    Dropout(dropout) when dropout > 0: the hidden part of an MLP (the CLI's and the tables')."""
    layers: list[Layer] = []
    for i, o in zip(widths[:-1], widths[1:]):
        layers.append(Dense(i, o, activation, init=init))
        if dropout:
            layers.append(Dropout(dropout))
    return layers


def check_chain(layers, what: str) -> None:
    """Raise ValueError unless each layer's input width equals the previous one's output."""
    _infer_widths(layers, what)
    for i in range(1, len(layers)):
        prev, cur = layers[i - 1], layers[i]
        if cur.in_features != prev.out_features:
            raise ValueError(f"{what}: layer {i} ({cur!r}) takes {cur.in_features} inputs but "
                             f"layer {i - 1} ({prev!r}) outputs {prev.out_features}")


def bind_chain(layers, params, grads, state) -> None:
    """Hand consecutive slices of the flat buffers to each layer in order."""
    p = s = 0
    for layer in layers:
        layer._bind(params[p:p + layer.n_params], grads[p:p + layer.n_params],
                    state[s:s + layer.n_state])
        p += layer.n_params
        s += layer.n_state


def from_config(config: dict) -> Layer:
    """Rebuild a layer from :meth:`Layer.get_config` output (used by ``fastnn.load``)."""
    kind = config.get("type")
    args = {k: v for k, v in config.items() if k != "type"}
    if kind == "Dense":
        return Dense(**args)
    if kind == "BatchNorm":
        return BatchNorm(**args)
    if kind == "Residual":
        return Residual([from_config(c) for c in args["block"]])
    if kind == "Dropout":
        return Dropout(**args)
    if kind == "Standardize":
        from .preprocessing import Standardize        # it imports this module
        return Standardize(**args)
    raise ValueError(f"unknown layer type {kind!r} in architecture")
