"""Optimizer steps against their closed forms, written here element by element in plain Python
(PyTorch's update rules: torch.optim.SGD with dampening 0, Adam, AdamW, RMSprop with
centered=False), over several steps with nonzero state, on every usable backend; and the
optimizers' arguments."""
import math

import numpy as np
import pytest

import fastnn
from fastnn import SGD, Adam, AdamW, RMSprop, Sequential, Dense

BACKENDS = [n for n, i in fastnn.available_backends().items() if i.usable]
P0 = [0.5, -1.25, 2.0]
GRADS = [[0.1, -0.2, 0.3], [-0.4, 0.05, 0.2], [0.3, 0.3, -0.1]]


def closed_form(kind: str, lr: float, mu: float = 0.0, wd: float = 0.0, nesterov=False,
                b1=0.9, b2=0.999, alpha=0.99, eps=1e-8):
    """The parameters after the three steps of GRADS, one element at a time."""
    out = []
    for j, w in enumerate(P0):
        v = m = s = 0.0
        for t, grads in enumerate(GRADS, start=1):
            g = grads[j] + (0.0 if kind == "adamw" else wd * w)
            if kind == "sgd":
                if mu:
                    v = mu * v + g
                    w -= lr * (g + mu * v if nesterov else v)
                else:
                    w -= lr * g
            elif kind in ("adam", "adamw"):
                m = b1 * m + (1 - b1) * g
                s = b2 * s + (1 - b2) * g * g
                if kind == "adamw":
                    w *= 1 - lr * wd
                w -= lr * (m / (1 - b1 ** t)) / (math.sqrt(s / (1 - b2 ** t)) + eps)
            else:                                                   # rmsprop
                s = alpha * s + (1 - alpha) * g * g
                d = g / (math.sqrt(s) + eps)
                if mu:
                    v = mu * v + d
                    d = v
                w -= lr * d
        out.append(w)
    return out


CASES = {
    "sgd": (lambda: SGD(0.1), dict(kind="sgd", lr=0.1)),
    "sgd, weight decay": (lambda: SGD(0.1, weight_decay=0.05),
                          dict(kind="sgd", lr=0.1, wd=0.05)),
    "momentum": (lambda: SGD(0.1, momentum=0.9), dict(kind="sgd", lr=0.1, mu=0.9)),
    "nesterov, weight decay": (lambda: SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
                               dict(kind="sgd", lr=0.1, mu=0.9, wd=0.05, nesterov=True)),
    "adam": (lambda: Adam(0.01), dict(kind="adam", lr=0.01)),
    "adam, weight decay": (lambda: Adam(0.01, weight_decay=0.1),
                           dict(kind="adam", lr=0.01, wd=0.1)),
    "adamw": (lambda: AdamW(0.01, weight_decay=0.1), dict(kind="adamw", lr=0.01, wd=0.1)),
    "rmsprop": (lambda: RMSprop(0.01), dict(kind="rmsprop", lr=0.01)),
    "rmsprop, momentum, weight decay": (
        lambda: RMSprop(0.01, alpha=0.9, momentum=0.8, weight_decay=0.05),
        dict(kind="rmsprop", lr=0.01, mu=0.8, wd=0.05, alpha=0.9)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_three_steps_equal_the_closed_form(backend, case):
    make, form = CASES[case]
    kernels = fastnn.backends.resolve(backend)[1]
    optimizer = make()
    params = np.array(P0)
    for grads in GRADS:
        optimizer.step(kernels, params, np.array(grads))
    np.testing.assert_allclose(params, closed_form(**form), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("make, message", [
    (lambda: SGD(0.1, weight_decay=-1e-3), "weight_decay must be a finite non-negative"),
    (lambda: SGD(0.1, weight_decay=float("nan")), "weight_decay must be a finite"),
    (lambda: SGD(0.1, nesterov=True), "nesterov=True needs a momentum > 0"),
    (lambda: SGD(float("nan")), "lr must be a finite positive"),
    (lambda: Adam(eps=0.0), "eps must be a finite positive"),
    (lambda: AdamW(weight_decay=-0.01), "weight_decay must be a finite non-negative"),
    (lambda: RMSprop(alpha=1.5), r"alpha must be in \[0, 1\)"),
    (lambda: RMSprop(eps=-1.0), "eps must be a finite positive"),
    (lambda: RMSprop(momentum=1.0), r"momentum must be in \[0, 1\)"),
])
def test_bad_optimizer_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_negative_learning_rate_from_a_callback_is_refused():
    optimizer = AdamW()
    with pytest.raises(ValueError, match="lr must be a finite non-negative"):
        optimizer.lr = -0.1
    optimizer.lr = 0.0                     # where a schedule ends
    assert optimizer.lr == 0.0


def test_repr_and_the_cli_names():
    assert repr(AdamW()) == ("AdamW(lr=0.001, beta1=0.9, beta2=0.999, eps=1e-08, "
                             "weight_decay=0.01)")
    assert set(fastnn.optimizers.OPTIMIZERS) == {"sgd", "adam", "adamw", "rmsprop"}
    model = Sequential([Dense(2, 1)], backend="reference")
    model.fit(np.ones((4, 2)), np.ones(4), loss="mse", optimizer=RMSprop(), epochs=1,
              verbose=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clip", [0.05, 1e6])
def test_clip_norm_is_torch_clip_grad_norm(backend, clip):
    """One SGD step on the whole batch: w ← w − η g·min(1, clip/(‖g‖₂ + 1e-6)), and the
    model's gradient buffer holds the clipped gradient (clip_grad_norm_ scales p.grad)."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 3)), rng.standard_normal((16, 2))
    model = Sequential([Dense(3, 4, "tanh"), Dense(4, 2)], backend=backend, dtype="float64")
    before = model.parameters().copy()
    model.compute_gradients(X, y, "mse")
    g = model.gradients().copy()
    coef = min(1.0, clip / (np.linalg.norm(g) + 1e-6))
    model.fit(X, y, loss="mse", optimizer=SGD(0.1), epochs=1, batch_size=16, shuffle=False,
              clip_norm=clip, verbose=0)
    np.testing.assert_allclose(model.gradients(), g * coef, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(model.parameters(), before - 0.1 * g * coef, rtol=1e-12,
                               atol=1e-15)
    assert (coef < 1) == (clip == 0.05)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), "1"])
def test_bad_clip_norm(bad):
    model = Sequential([Dense(3, 2)], backend="reference")
    before = model.parameters().copy()
    with pytest.raises((ValueError, TypeError), match="clip_norm must be"):
        model.fit(np.ones((4, 3)), np.ones((4, 2)), loss="mse", clip_norm=bad, verbose=0)
    np.testing.assert_array_equal(model.parameters(), before)
