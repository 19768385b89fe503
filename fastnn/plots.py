"""Figures (matplotlib, fastnn's optional ``plot`` extra): a training history."""
from __future__ import annotations

import os


def pyplot():
    """matplotlib.pyplot on a file-only backend, or ImportError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plotting needs matplotlib, fastnn's optional 'plot' extra: "
                          "pip install 'fastnn[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_history(history, path: str | os.PathLike | None = None):
    """Draw loss and val_loss (and the accuracies, on a second axis, when recorded) against the
    epoch (from 1), with the best epoch marked; save to ``path`` when given (the format
    follows its extension, e.g. .png). Returns the matplotlib Figure."""
    plt = pyplot()
    figures = history.history
    if not figures.get("loss"):
        raise ValueError("the history holds no epochs to plot")
    epochs = range(1, len(figures["loss"]) + 1)
    accuracies = [k for k in ("accuracy", "val_accuracy") if figures.get(k)]
    fig, axes = plt.subplots(1, 2 if accuracies else 1, figsize=(10 if accuracies else 6, 4),
                             squeeze=False)
    panels = [(axes[0, 0], ["loss", "val_loss"], "loss")]
    if accuracies:
        panels.append((axes[0, 1], accuracies, "accuracy"))
    for ax, names, label in panels:
        for name in names:
            if figures.get(name):
                ax.plot(epochs, figures[name], label=name)
        if history.best_epoch is not None:
            ax.axvline(history.best_epoch + 1, color="grey", linestyle="--",
                       label=f"best epoch ({history.best_epoch + 1})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.legend()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
        plt.close(fig)
    return fig
