"""PNG plots any layer may draw (matplotlib, imported only when a plot is made)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def new_pyplot():
    """matplotlib.pyplot on the Agg back end (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(plt, fig, out: str | Path) -> Path:
    """Lay out, write the PNG (creating its folder) and free the figure."""
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_bars(
    labels: Sequence[str],
    values: Sequence[float],
    out: str | Path,
    ylabel: str,
    title: str,
    errors: Sequence[float] | None = None,
    log: bool = False,
) -> Path:
    """A labelled bar chart as a PNG (accuracy per head, images/s per back end, ...)."""
    plt = new_pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(labels) + 2), 4))
    bars = ax.bar(list(labels), list(values), yerr=list(errors) if errors else None, capsize=4, color="#4c72b0")
    for b, v in zip(bars, values):
        ax.annotate(f"{v:,.3g}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    return save_figure(plt, fig, out)
