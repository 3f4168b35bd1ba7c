"""Plots and the Markdown report of a run: ``fsmtl plot RUN`` and what ``fsmtl demo`` writes.

Everything is drawn from files a run leaves behind (``metrics.jsonl``, eval JSON, benchmark
JSON), so any run can be re-plotted later without re-running anything.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Sequence

from fsmtl.errors import FsmtlError


def load_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of ``RUN/metrics.jsonl`` (one JSON object per line)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise FsmtlError(f"{path}: not found (expected the metrics of a training run)")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise FsmtlError(f"{path}:{i}: not valid JSON: {e}") from None
    if not rows:
        raise FsmtlError(f"{path}: empty (the run has not finished an epoch)")
    return rows


def _first(row: dict[str, Any], *keys: str) -> float | None:
    for k in keys:
        v = row.get(k)
        if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
            return float(v)
    return None


def _series(rows: Sequence[dict[str, Any]], *keys: str) -> tuple[list[float], list[float]]:
    """(wall-clock minutes, value) pairs of the first key present in each row."""
    xs, ys = [], []
    for r in rows:
        y = _first(r, *keys)
        t = _first(r, "wall_time_s", "wall_s", "time_s")
        if y is not None and t is not None:
            xs.append(t / 60.0)
            ys.append(y)
    return xs, ys


def _percent(values: list[float]) -> list[float]:
    """train/ logs accuracies as fractions; plots show percent."""
    return [v * 100.0 for v in values] if values and max(values) <= 1.0 else list(values)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, out: str | Path) -> Path:
    """Lay out, write the PNG (creating its folder) and free the figure."""
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_curves(rows: Sequence[dict[str, Any]], out: str | Path, title: str = "") -> Path:
    """Training loss and train/validation accuracy against wall-clock time, as one PNG."""
    plt = _plt()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    x, y = _series(rows, "train_loss")
    ax_loss.plot(x, y, marker="o", ms=3, label="train loss")
    ax_loss.set_xlabel("wall-clock time (min)")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("training loss")
    ax_loss.grid(alpha=0.3)
    for keys, label in ((("train_acc",), "train (within-task)"), (("val_acc",), "validation")):
        x, y = _series(rows, *keys)
        if x:
            ax_acc.plot(x, _percent(y), marker="o", ms=3, label=label)
    x, y = _series(rows, "val_acc")
    ci = [(_first(r, "val_ci95") or 0.0) for r in rows if _first(r, "val_acc") is not None]
    if x and len(ci) == len(y):
        scale = 100.0 if y and max(y) <= 1.0 else 1.0
        y, ci = [v * scale for v in y], [c * scale for c in ci]
        ax_acc.fill_between(x, [a - c for a, c in zip(y, ci)], [a + c for a, c in zip(y, ci)], alpha=0.2)
    ax_acc.set_xlabel("wall-clock time (min)")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_title("accuracy")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend()
    if title:
        fig.suptitle(title)
    return _save(plt, fig, out)


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
    plt = _plt()
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
    return _save(plt, fig, out)


def main(argv: list[str] | None = None) -> int:
    """``fsmtl plot RUN [--out FILE]``: draw the curves of a run from its metrics.jsonl."""
    p = argparse.ArgumentParser(prog="fsmtl plot", description=main.__doc__)
    p.add_argument("run", type=Path, help="run directory holding metrics.jsonl")
    p.add_argument("--out", type=Path, default=None, help="PNG to write (default RUN/curves.png)")
    a = p.parse_args(argv)
    rows = load_metrics(a.run)
    out = plot_curves(rows, a.out or a.run / "curves.png", title=str(a.run.name))
    print(f"wrote {out} ({len(rows)} epochs)")
    return 0
