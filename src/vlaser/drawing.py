"""What the two quickstarts draw alike: the named colours of their synthetic scenes (the SFT tabletop's shapes,
the VLA reach task's discs) and the training-loss plot of their reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from vlaser.errors import require

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 205, 30)}


def plot_loss(path: Path, series: Mapping[str, Sequence[Sequence[float]]], ylabel: str, title: str) -> bool:
    """``path`` (a PNG): each series' ``(step, loss)`` points on a log scale, labelled by its name when it has
    one; nothing is written (False) when every series is empty."""
    if not any(series.values()):
        return False
    matplotlib = require("matplotlib", "quickstart", "the quickstart's plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    for name, points in series.items():
        if points:
            steps, losses = zip(*points)
            ax.plot(steps, losses, label=name or None)
    if any(series):
        ax.legend(fontsize=7)
    ax.set(xlabel="step", ylabel=ylabel, yscale="log", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
