"""Learning curves as a PNG (matplotlib's Agg backend, imported only when a plot is drawn)."""
from __future__ import annotations

import numpy as np


def moving_average(values, window: int) -> np.ndarray:
    """Trailing mean over up to `window` previous values (same length as the input)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return v
    c = np.concatenate([[0.0], np.cumsum(v)])
    i = np.arange(1, v.size + 1)
    lo = np.maximum(i - window, 0)
    return (c[i] - c[lo]) / (i - lo)


def plot_learning_curves(history, path, window: int = 20) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    steps = np.asarray(history.steps)
    ax_loss.plot(steps, history.losses, alpha=0.3, lw=0.8, label="loss (per batch)")
    ax_loss.plot(steps, moving_average(history.losses, window), lw=1.5, label=f"moving average ({window})")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    epochs = [e["epoch"] for e in history.epochs]
    ax_acc.plot(epochs, [e["train_acc"] for e in history.epochs], "o-", label="train")
    if history.epochs and history.epochs[0].get("val_acc") is not None:
        ax_acc.plot(epochs, [e["val_acc"] for e in history.epochs], "o-", label="validation")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
