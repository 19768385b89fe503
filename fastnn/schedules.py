"""Learning-rate schedules for :class:`fastnn.callbacks.LearningRateScheduler`.

Each is a callable ``schedule(epoch, lr) -> lr`` (epochs count from 0, as in Keras and PyTorch)
in closed form: it remembers the learning rate it was first called with at epoch 0 (``base``)
and computes every later value from it, so a run's values do not depend on rounding carried
from epoch to epoch. Where PyTorch has the same schedule, the values equal its schedulers'
(``scheduler.step()`` once per epoch) at every epoch named in each docstring.
"""
from __future__ import annotations

import math
from collections.abc import Callable

from . import validation

Schedule = Callable[[int, float], float]


class _ClosedForm:
    """A schedule computed from the base learning rate (the one seen at epoch 0)."""

    def __init__(self):
        self.base: float | None = None

    def __call__(self, epoch: int, lr: float) -> float:
        if epoch == 0 or self.base is None:
            self.base = float(lr)
        return self.at(epoch, self.base)

    def at(self, epoch: int, base: float) -> float:
        raise NotImplementedError


class cosine(_ClosedForm):
    """lr = min_lr + (base − min_lr)(1 + cos(π·epoch/total_epochs))/2, then min_lr.

    Equals ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=total_epochs,
    eta_min=min_lr)`` for 0 ≤ epoch ≤ total_epochs; after that PyTorch's rises again along the
    cosine, while this one stays at min_lr.
    """

    def __init__(self, total_epochs: int, min_lr: float = 0.0):
        super().__init__()
        self.total = validation.positive_int(total_epochs, "total_epochs")
        self.min_lr = validation.positive_float(min_lr, "min_lr", allow_zero=True)

    def at(self, epoch, base):
        e = min(epoch, self.total)
        return self.min_lr + (base - self.min_lr) * (1 + math.cos(math.pi * e / self.total)) / 2


class step(_ClosedForm):
    """lr = base · gamma^⌊epoch/every⌋: ``torch.optim.lr_scheduler.StepLR(step_size=every,
    gamma=gamma)`` at every epoch."""

    def __init__(self, every: int, gamma: float = 0.1):
        super().__init__()
        self.every = validation.positive_int(every, "every")
        self.gamma = validation.positive_float(gamma, "gamma")

    def at(self, epoch, base):
        return base * self.gamma ** (epoch // self.every)


class exponential(_ClosedForm):
    """lr = base · gamma^epoch: ``torch.optim.lr_scheduler.ExponentialLR(gamma)`` at every
    epoch."""

    def __init__(self, gamma: float):
        super().__init__()
        self.gamma = validation.positive_float(gamma, "gamma")

    def at(self, epoch, base):
        return base * self.gamma ** epoch


class linear(_ClosedForm):
    """lr goes in a straight line from base to end_lr over total_epochs, then stays:
    ``torch.optim.lr_scheduler.LinearLR(start_factor=1, end_factor=end_lr/base,
    total_iters=total_epochs)`` at every epoch."""

    def __init__(self, total_epochs: int, end_lr: float):
        super().__init__()
        self.total = validation.positive_int(total_epochs, "total_epochs")
        self.end_lr = validation.positive_float(end_lr, "end_lr", allow_zero=True)

    def at(self, epoch, base):
        return base + (self.end_lr - base) * min(epoch, self.total) / self.total


class warmup(_ClosedForm):
    """lr = base·(epoch + 1)/epochs for the first ``epochs`` epochs, then ``then(epoch −
    epochs, base)`` (another schedule, started at epoch 0 from base), or base.

    The warm-up equals ``torch.optim.lr_scheduler.LinearLR(start_factor=1/epochs,
    end_factor=1, total_iters=epochs − 1)`` for epoch < epochs.
    """

    def __init__(self, epochs: int, then: Schedule | None = None):
        super().__init__()
        self.epochs = validation.positive_int(epochs, "epochs")
        if then is not None and not callable(then):
            raise TypeError(f"then must be a schedule(epoch, lr) -> lr, got "
                            f"{type(then).__name__}")
        self.then = then

    def at(self, epoch, base):
        if epoch < self.epochs:
            return base * (epoch + 1) / self.epochs
        return base if self.then is None else self.then(epoch - self.epochs, base)


__all__ = ["cosine", "exponential", "linear", "step", "warmup"]
