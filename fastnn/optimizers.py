"""Optimizers: each is one backend kernel call over the model's flat parameter buffer.

An optimizer keeps its state (velocity, Adam moments) in flat buffers with the same layout as
the parameters; the state is created on the first step and reused while the model is the same.
"""
from __future__ import annotations

import numpy as np

from . import validation
from .kernels import ADAM, MOMENTUM
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


class SGD(Optimizer):
    """Gradient descent w ← w − η ∂L/∂w; with momentum μ > 0: v ← μv + ∂L/∂w, w ← w − η v."""

    def __init__(self, lr: float = 0.01, momentum: float = 0.0):
        super().__init__(lr)
        self.momentum = validation.positive_float(momentum, "momentum", allow_zero=True)
        if self.momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")

    def _init_state(self, params):
        self.velocity = np.zeros_like(params) if self.momentum else None

    def _step(self, kernels, params, grads):
        if self.momentum:
            kernels.sgd_momentum(params, grads, self.velocity, self.lr, self.momentum)
        else:
            kernels.sgd(params, grads, self.lr)

    def fused_rule(self, params):
        if type(self)._step is not SGD._step:
            return None
        self.ensure_state(params)
        if self.momentum:
            return MOMENTUM, (self.lr, self.momentum, 0.0, 0.0), 0, self.velocity, None
        return SGD_RULE, (self.lr, 0.0, 0.0, 0.0), 0, None, None

    def get_config(self):
        return {"lr": self.lr, "momentum": self.momentum}


class Adam(Optimizer):
    """Adam: bias-corrected moving averages of the gradient and its square (Kingma & Ba)."""

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8):
        super().__init__(lr)
        for name, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0 <= validation.positive_float(beta, name, allow_zero=True) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {beta}")
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.eps = validation.positive_float(eps, "eps")

    def _init_state(self, params):
        self.m = np.zeros_like(params)
        self.v = np.zeros_like(params)
        self.t = 0

    def _step(self, kernels, params, grads):
        self.t += 1
        kernels.adam(params, grads, self.m, self.v, self.lr, self.beta1, self.beta2,
                     self.eps, self.t)

    def fused_rule(self, params):
        if type(self)._step is not Adam._step:
            return None
        self.ensure_state(params)
        return ADAM, (self.lr, self.beta1, self.beta2, self.eps), self.t, self.m, self.v

    def fused_steps_done(self, step: int) -> None:
        """Take the step count a fused trainer reached (bias correction continues from it)."""
        self.t = int(step)

    def get_config(self):
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}


OPTIMIZERS = {"sgd": SGD, "adam": Adam}
