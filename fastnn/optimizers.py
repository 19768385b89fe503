"""Optimizers: each is one backend kernel call over the model's flat parameter buffer.

An optimizer keeps its state (velocity, Adam moments) in flat buffers with the same layout as
the parameters; the state is created on the first step and reused while the model is the same.
"""
from __future__ import annotations

import numpy as np

from . import validation
from .kernels import ADAM, ADAMW, MOMENTUM, RMSPROP
from .kernels import SGD as SGD_RULE


class Optimizer:
    """Base class: subclasses implement :meth:`_step` with one backend kernel call."""

    def __init__(self, lr: float):
        self._lr = validation.positive_float(lr, "lr")
        self._state_for = None

    @property
    def lr(self) -> float:
        """The learning rate. Callbacks and schedules may set it between epochs (0 included,
        where a schedule ends); a fused trainer reads it as plan data, compiling nothing."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = validation.positive_float(value, "lr", allow_zero=True)

    def step(self, kernels, params: np.ndarray, grads: np.ndarray) -> None:
        """Update ``params`` in place from ``grads`` with the backend's kernel."""
        self.ensure_state(params)
        self._step(kernels, params, grads)

    def ensure_state(self, params: np.ndarray) -> None:
        """Create the optimizer state for ``params`` unless it exists (fused trainers call
        this, then update the state arrays themselves)."""
        if self._state_for is not params:      # a new model (or the first step): fresh state
            self._init_state(params)
            self._state_for = params

    def _init_state(self, params: np.ndarray) -> None:
        pass

    def fused_rule(self, params: np.ndarray):
        """(rule code, hyper-parameters (lr, momentum or β₁, β₂, ε), step count, state 1,
        state 2) with which a fused trainer applies this optimizer to ``params`` (its state
        created if needed), or None when it has no rule there: the model then trains layer by
        layer through :meth:`step`. A subclass that overrides ``_step`` gets None."""
        return

    def _step(self, kernels, params, grads) -> None:
        raise NotImplementedError

    def fused_steps_done(self, step: int) -> None:
        """Take the step count a fused trainer reached (only Adam keeps one)."""

    def get_config(self) -> dict:
        return {"lr": self.lr}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _beta(value, name: str) -> float:
    if not 0 <= validation.positive_float(value, name, allow_zero=True) < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


class SGD(Optimizer):
    """Gradient descent as ``torch.optim.SGD`` (dampening 0), step for step: with
    g = ∂L/∂w + λw (``weight_decay`` λ, L2 added to the gradient), w ← w − η g; with momentum
    μ > 0, v ← μv + g and w ← w − η v, or with ``nesterov`` w ← w − η (g + μv)."""

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        super().__init__(lr)
        self.momentum = validation.positive_float(momentum, "momentum", allow_zero=True)
        if self.momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not isinstance(nesterov, bool):
            raise TypeError(f"nesterov must be True or False, got {nesterov!r}")
        if nesterov and not self.momentum:
            raise ValueError("nesterov=True needs a momentum > 0")
        self.nesterov = nesterov
        self.weight_decay = validation.positive_float(weight_decay, "weight_decay",
                                                      allow_zero=True)

    def _init_state(self, params):
        self.velocity = np.zeros_like(params) if self.momentum else None

    def _step(self, kernels, params, grads):
        if self.momentum:
            kernels.sgd_momentum(params, grads, self.velocity, self.lr, self.momentum,
                                 self.nesterov, self.weight_decay)
        else:
            kernels.sgd(params, grads, self.lr, self.weight_decay)

    def fused_rule(self, params):
        if type(self)._step is not SGD._step:
            return None
        self.ensure_state(params)
        hyper = (self.lr, self.momentum, 0.0, 0.0, self.weight_decay, float(self.nesterov))
        if self.momentum:
            return MOMENTUM, hyper, 0, self.velocity, None
        return SGD_RULE, hyper, 0, None, None

    def get_config(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Adam as ``torch.optim.Adam``: bias-corrected moving averages of the gradient and its
    square (Kingma & Ba); ``weight_decay`` λ adds L2 to the gradient (g = ∂L/∂w + λw)."""

    _decoupled = False

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(lr)
        self.beta1, self.beta2 = _beta(beta1, "beta1"), _beta(beta2, "beta2")
        self.eps = validation.positive_float(eps, "eps")
        self.weight_decay = validation.positive_float(weight_decay, "weight_decay",
                                                      allow_zero=True)

    def _init_state(self, params):
        self.m = np.zeros_like(params)
        self.v = np.zeros_like(params)
        self.t = 0

    def _step(self, kernels, params, grads):
        self.t += 1
        step = kernels.adamw if self._decoupled else kernels.adam
        step(params, grads, self.m, self.v, self.lr, self.beta1, self.beta2, self.eps, self.t,
             self.weight_decay)

    def fused_rule(self, params):
        if type(self)._step is not Adam._step:
            return None
        self.ensure_state(params)
        return (ADAMW if self._decoupled else ADAM,
                (self.lr, self.beta1, self.beta2, self.eps, self.weight_decay, 0.0), self.t,
                self.m, self.v)

    def fused_steps_done(self, step: int) -> None:
        """Take the step count a fused trainer reached (bias correction continues from it)."""
        self.t = int(step)

    def get_config(self):
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
                "weight_decay": self.weight_decay}


class AdamW(Adam):
    """AdamW as ``torch.optim.AdamW``: decoupled weight decay, w ← w(1 − ηλ), then Adam's
    step on the plain gradient (Loshchilov & Hutter)."""

    _decoupled = True

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(lr, beta1, beta2, eps, weight_decay)


class RMSprop(Optimizer):
    """RMSprop as ``torch.optim.RMSprop`` with centered=False: g = ∂L/∂w + λw,
    s ← αs + (1−α)g²; w ← w − η g/(√s + ε), or with momentum μ > 0 v ← μv + g/(√s + ε) and
    w ← w − η v."""

    def __init__(self, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(lr)
        self.alpha = _beta(alpha, "alpha")
        self.eps = validation.positive_float(eps, "eps")
        self.momentum = validation.positive_float(momentum, "momentum", allow_zero=True)
        if self.momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        self.weight_decay = validation.positive_float(weight_decay, "weight_decay",
                                                      allow_zero=True)

    def _init_state(self, params):
        self.square_avg = np.zeros_like(params)
        self.velocity = np.zeros_like(params) if self.momentum else None

    def _step(self, kernels, params, grads):
        kernels.rmsprop(params, grads, self.square_avg, self.velocity, self.lr, self.alpha,
                        self.eps, self.momentum, self.weight_decay)

    def fused_rule(self, params):
        if type(self)._step is not RMSprop._step:
            return None
        self.ensure_state(params)
        return (RMSPROP, (self.lr, self.momentum, self.alpha, self.eps, self.weight_decay, 0.0),
                0, self.square_avg, self.velocity)

    def get_config(self):
        return {"lr": self.lr, "alpha": self.alpha, "eps": self.eps, "momentum": self.momentum,
                "weight_decay": self.weight_decay}


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}
