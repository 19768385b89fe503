"""The vanishing-gradient lab behind ``fastnn vanishing``.

Deep networks in six variants — the disease and its cures — are built for the digits dataset,
their per-layer gradient norms measured at initialisation; then each is trained with plain SGD
on one shared learning-rate schedule and measured again. See docs/vanishing_gradients.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import backends, diagnostics, validation
from .datasets import load_digits_split
from .layers import BatchNorm, Dense, Layer, Residual
from .model import Sequential
from .optimizers import SGD
from .plots import pyplot


@dataclass(frozen=True)
class Variant:
    """One network recipe (see :func:`build_layers`)."""

    label: str
    activation: str
    init: str
    batchnorm: bool = False
    residual: bool = False


VARIANTS = {
    "a": Variant("sigmoid + Xavier", "sigmoid", "xavier_uniform"),
    "b": Variant("sigmoid + N(0, 0.01²)", "sigmoid", "normal"),
    "c": Variant("ReLU + He", "relu", "he_normal"),
    "d": Variant("sigmoid + BatchNorm", "sigmoid", "xavier_uniform", batchnorm=True),
    "e": Variant("sigmoid + residual", "sigmoid", "xavier_uniform", residual=True),
    "f": Variant("ReLU + He + BN + residual", "relu", "he_normal", batchnorm=True,
                 residual=True),
}


#: BatchNorm's ε in the lab. Its backward pass multiplies the signal by 1/√(σ²_batch + ε): the
#: gain that undoes sigmoid's σ′ ≤ 1/4 on a unit with σ_batch ≈ 0.2, but up to 1/√ε on a unit
#: that saturates on a batch. The default ε = 1e-5 (gain ≤ 316) lets such units explode the
#: gradient within an epoch; 1e-2 caps it at 10 and lowers an ordinary unit's gain by a tenth.
BN_EPS = 1e-2


def build_layers(variant: Variant, n_in: int, n_out: int, depth: int, width: int) -> list[Layer]:
    """``depth`` hidden layers Dense(width, activation, init) and a linear output layer (logits).

    With ``batchnorm`` every Dense but the first normalises its input: BatchNorm, then Dense,
    with ε = :data:`BN_EPS`.
    With ``residual`` a linear Dense embeds the inputs in a ``width``-wide stream and every
    hidden layer becomes a skip block x + P·f(·), P a linear Dense(width, width): the branch's
    output is then centred, so the stream does not drift with depth as it would by adding
    f ≥ 0, and no BatchNorm sees the sparse output of a ReLU (a unit that is dead on every
    training batch gets a running variance of ~0 and amplifies test inputs by 1/√ε).
    """
    def normalised(fan_in: int, fan_out: int, **dense) -> list[Layer]:
        norm: list[Layer] = [BatchNorm(fan_in, eps=BN_EPS)] if variant.batchnorm else []
        return norm + [Dense(fan_in, fan_out, **dense)]

    act = {"activation": variant.activation, "init": variant.init}
    if variant.residual:
        layers: list[Layer] = [Dense(n_in, width)]
        layers += [Residual(normalised(width, width, **act) + [Dense(width, width)])
                   for _ in range(depth)]
    else:
        layers = [Dense(n_in, width, **act)]
        for _ in range(depth - 1):
            layers += normalised(width, width, **act)
    return layers + normalised(width, n_out, init=variant.init)


@dataclass
class LabResult:
    """What the lab measured for one variant."""

    variant: Variant
    at_init: diagnostics.GradientNorms
    trained_norms: np.ndarray | None     # weight-gradient norms after the last finished epoch
    test_accuracy: list[float]           # one per finished epoch
    diverged: bool = False               # the loss overflowed and training stopped

    @property
    def ratio_init(self) -> float:
        return self.at_init.first_to_last

    @property
    def ratio_trained(self) -> float:
        return float(self.trained_norms[0] / self.trained_norms[-1])


def run_variant(key: str, depth: int = 20, width: int = 64, epochs: int = 25,
                lr: float = 0.03, batch_size: int = 32, seed: int = 0, backend: str = "auto",
                data=None) -> LabResult:
    """Build variant ``key`` ("a" … "f"), measure its gradients, train it, measure again.

    Training is plain SGD (no momentum) whose learning rate falls linearly from ``lr`` in the
    first epoch to ``lr / epochs`` in the last: networks whose gradients do reach every layer
    train at the edge of stability, and a constant rate leaves their test accuracy jumping
    from epoch to epoch. ``data`` is ``(X_train, X_test, y_train, y_test)``, by default the
    digits split of ``seed``. Gradients are measured on the fixed batch of training rows that
    ``fit(track_gradients=True)`` uses.
    """
    variant = VARIANTS[key]
    X_train, X_test, y_train, y_test = load_digits_split(seed=seed) if data is None else data
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    model = Sequential(build_layers(variant, X_train.shape[1], n_classes, depth, width),
                       backend=backend, seed=seed)
    rows = diagnostics.probe_rows(len(X_train), batch_size)
    at_init = diagnostics.gradient_norms(model, X_train[rows], y_train[rows], "cross_entropy")
    trained_norms, accuracy = None, []
    for epoch in range(epochs):
        try:
            history = model.fit(X_train, y_train, loss="cross_entropy",
                                optimizer=SGD(lr * (1 - epoch / epochs)), epochs=1,
                                batch_size=batch_size, validation_data=(X_test, y_test),
                                verbose=0, track_gradients=True)
        except FloatingPointError:
            return LabResult(variant, at_init, trained_norms, accuracy, diverged=True)
        trained_norms = history["gradient_norms"][-1]
        accuracy += history["val_accuracy"]
    return LabResult(variant, at_init, trained_norms, accuracy)


def run_lab(keys=tuple(VARIANTS), **options) -> dict[str, LabResult]:
    """:func:`run_variant` for each key, on one shared data split."""
    data = load_digits_split(seed=options.get("seed", 0))
    return {key: run_variant(key, data=data, **options) for key in keys}


def _decay(norms) -> str:
    try:
        return f"{diagnostics.decay_factor(norms):.3f}"
    except ValueError:              # a norm underflowed to zero: no finite fit
        return "n/a"


def format_table(results: dict[str, LabResult]) -> str:
    """The lab's table: first/last layer gradient-norm ratio and fitted per-layer decay, at
    initialisation and after training, and the final test accuracy."""
    lines = [f"{'':<32}{'first/last ‖∂L/∂W‖':>20}  {'decay per layer':>16}  {'test':>8}",
             f"{'variant':<32}{'init':>9}{'trained':>11}  {'init':>7}{'trained':>9}  "
             f"{'accuracy':>8}"]
    for key, r in results.items():
        if r.trained_norms is None:
            trained = f"{'-':>11}  {_decay(r.at_init.weight_norms):>7}{'-':>9}"
        else:
            trained = (f"{r.ratio_trained:>11.1e}  {_decay(r.at_init.weight_norms):>7}"
                       f"{_decay(r.trained_norms):>9}")
        accuracy = "diverged" if r.diverged else f"{r.test_accuracy[-1]:.3f}"
        lines.append(f"({key}) {r.variant.label:<28}{r.ratio_init:>9.1e}{trained}  "
                     f"{accuracy:>8}")
    return "\n".join(lines)


def plot(results: dict[str, LabResult], path: str) -> None:
    """Save a figure: weight-gradient norm per Dense layer on a log scale (solid at
    initialisation, dashed after training) and test accuracy per epoch, one colour per variant.
    """
    plt = pyplot()
    fig, (ax_norm, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.6))
    for key, r in results.items():
        layer = np.arange(1, len(r.at_init.weight_norms) + 1)
        line, = ax_norm.semilogy(layer, r.at_init.weight_norms, marker=".", ms=4,
                                 label=f"({key}) {r.variant.label}")
        if r.trained_norms is not None:
            ax_norm.semilogy(layer, r.trained_norms, ls="--", lw=1, color=line.get_color())
        epoch = np.arange(1, len(r.test_accuracy) + 1)
        ax_acc.plot(epoch, r.test_accuracy, marker=".", ms=4, color=line.get_color(),
                    label=f"({key})")
    ax_norm.set(xlabel="Dense layer (1 = input side)", ylabel="‖∂L/∂W‖ on one batch",
                title="gradient norm per layer: at init (solid), trained (dashed)")
    ax_norm.legend(fontsize=8)
    ax_norm.grid(alpha=0.3, which="major")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", ylim=(0, 1),
               title="plain SGD, the same learning-rate schedule for all")
    ax_acc.legend(fontsize=8, ncol=3, loc="center right")
    ax_acc.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def add_arguments(parser) -> None:
    """Options of ``fastnn vanishing``."""
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="which variants to run (default: all): " + "; ".join(
                            f"{k}: {v.label}" for k, v in VARIANTS.items()))
    parser.add_argument("--depth", type=int, default=20, help="hidden layers (default: 20)")
    parser.add_argument("--width", type=int, default=64, help="units per hidden layer "
                                                              "(default: 64)")
    parser.add_argument("--epochs", type=int, default=25, help="epochs (default: 25)")
    parser.add_argument("--lr", type=float, default=0.03,
                        help="SGD learning rate of the first epoch, falling linearly to lr/epochs "
                             "in the last (default: 0.03)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=["auto", *backends.BACKENDS], default="auto")
    parser.add_argument("--plot", metavar="FILE", help="save the figure here (needs matplotlib)")


def cmd_vanishing(args) -> int:
    """Run the lab, print the table, save the figure if asked."""
    options = {"depth": validation.positive_int(args.depth, "depth"),
               "width": validation.positive_int(args.width, "width"),
               "epochs": validation.positive_int(args.epochs, "epochs"),
               "lr": validation.positive_float(args.lr, "lr"),
               "batch_size": validation.positive_int(args.batch_size, "batch_size"),
               "seed": args.seed, "backend": args.backend}
    if args.plot:
        pyplot()                   # fail before training, not after
    backend, _ = backends.resolve(args.backend)
    print(f"digits, {options['depth']} hidden layers of width {options['width']}; plain SGD, "
          f"lr {options['lr']:g} falling linearly over {options['epochs']} epochs, batch "
          f"{options['batch_size']}; backend {backend}, seed {options['seed']}")
    results = run_lab(args.variants, **options)
    print(format_table(results))
    if args.plot:
        plot(results, args.plot)
        print(f"figure saved to {args.plot}")
    return 0
