"""Plots and the Markdown report of a run: ``fsmtl plot RUN`` and what ``fsmtl demo`` writes.

Everything is drawn from files a run leaves behind (``metrics.jsonl``, eval JSON, benchmark
JSON), so any run can be re-plotted later without re-running anything.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from fsmtl.core.errors import FsmtlError
from fsmtl.core.plots import new_pyplot, save_figure


def load_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of ``RUN/metrics.jsonl`` (one JSON object per line)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        if (Path(run) / "checkpoints").is_dir() or (Path(run) / "config.json").is_file():  # a run, just started
            raise FsmtlError(f"{run}: no epoch has finished yet (metrics.jsonl is written after each epoch)")
        raise FsmtlError(f"{path}: not found (expected the metrics of a training run)")
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    last = max((i for i, line in enumerate(lines, 1) if line.strip()), default=0)
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == last:  # a run killed while appending its last line: keep what is whole
                print(f"fsmtl: warning: {path}:{i}: incomplete last line skipped", file=sys.stderr)
                continue
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


X_AXES = {"time": ("wall-clock time (min)", ("wall_time_s", "wall_s", "time_s"), 1 / 60.0),
          "step": ("optimizer step", ("step",), 1.0), "epoch": ("epoch", ("epoch",), 1.0)}


def _series(rows: Sequence[dict[str, Any]], *keys: str, x: str = "time") -> tuple[list[float], list[float]]:
    """(x, value) pairs of the first key present in each row; x is wall-clock minutes, step or epoch."""
    _, x_keys, scale = X_AXES[x]
    xs, ys = [], []
    for r in rows:
        y = _first(r, *keys)
        t = _first(r, *x_keys)
        if y is not None and t is not None:
            xs.append(t * scale)
            ys.append(y)
    return xs, ys


def _percent(values: list[float]) -> list[float]:
    """train/ logs accuracies as fractions; plots show percent."""
    return [v * 100.0 for v in values] if values and max(values) <= 1.0 else list(values)


def _val_band(rows: Sequence[dict[str, Any]], x: str) -> tuple[list[float], list[float], list[float]]:
    """(x, validation accuracy %, its 95% half-width %) of the rows that were validated."""
    done = [r for r in rows if _first(r, "val_acc") is not None]
    xs, ys = _series(done, "val_acc", x=x)
    ci = [_first(r, "val_ci95") or 0.0 for r in done if _first(r, *X_AXES[x][1]) is not None]
    scale = 100.0 if ys and max(ys) <= 1.0 else 1.0  # train/ logs fractions, eval/ percent
    return xs, [v * scale for v in ys], [c * scale for c in ci]


def plot_curves(rows: Sequence[dict[str, Any]], out: str | Path, title: str = "", x: str = "time") -> Path:
    """Training loss and train/validation accuracy of one run against ``x`` (see ``X_AXES``), as one PNG."""
    plt = new_pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    xs, ys = _series(rows, "train_loss", x=x)
    ax_loss.plot(xs, ys, marker="o", ms=3, label="train loss")
    xs, ys = _series(rows, "train_acc", x=x)
    if xs:
        ax_acc.plot(xs, _percent(ys), marker="o", ms=3, label="train (within-task)")
    xs, ys, ci = _val_band(rows, x)
    if xs:
        (line,) = ax_acc.plot(xs, ys, marker="o", ms=3, label="validation")
        ax_acc.fill_between(xs, [a - c for a, c in zip(ys, ci)], [a + c for a, c in zip(ys, ci)],
                            color=line.get_color(), alpha=0.2)  # the band in its curve's colour
    for ax, name, ylabel in ((ax_loss, "training loss", "loss"), (ax_acc, "accuracy", "accuracy (%)")):
        ax.set_xlabel(X_AXES[x][0])
        ax.set_ylabel(ylabel)
        ax.set_title(name)
        ax.grid(alpha=0.3)
    if ax_acc.get_legend_handles_labels()[0]:
        ax_acc.legend()
    else:
        ax_acc.text(0.5, 0.5, "no validation", transform=ax_acc.transAxes, ha="center", va="center", color="0.5")
    if title:
        fig.suptitle(title)
    return save_figure(plt, fig, out)


def run_summary(name: str, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One line of ``fsmtl plot``'s table: best validation accuracy (%) and when, budget, speed."""
    vals = [(r["val_acc"], r) for r in rows if _first(r, "val_acc") is not None]
    best_acc, best = max(vals, key=lambda v: v[0]) if vals else (None, {})
    scale = 100.0 if vals and max(v for v, _ in vals) <= 1.0 else 1.0  # fractions -> percent
    speeds = sorted(v for v in (_first(r, "images_per_s") for r in rows) if v is not None)
    last = rows[-1]
    return {
        "run": name, "epochs": int(_first(last, "epoch") or len(rows)), "steps": int(_first(last, "step") or 0),
        "best_val_acc": None if best_acc is None else best_acc * scale,
        "best_ci95": None if best_acc is None else (best.get("val_ci95") or 0.0) * scale,
        "best_epoch": best.get("epoch"), "minutes": (_first(last, "wall_s", "wall_time_s") or 0.0) / 60.0,
        "images_per_s": speeds[len(speeds) // 2] if speeds else None,
    }  # fmt: skip


def format_summaries(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison table printed by ``fsmtl plot``."""
    head = f"{'run':<24} {'epochs':>6} {'steps':>8} {'best val %':>16} {'at epoch':>8} {'minutes':>8} {'images/s':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        best = "-" if r["best_val_acc"] is None else f"{r['best_val_acc']:.2f} +- {r['best_ci95']:.2f}"
        ips = "-" if r["images_per_s"] is None else f"{r['images_per_s']:,.0f}"
        lines.append(f"{r['run'][:24]:<24} {r['epochs']:>6} {r['steps']:>8} {best:>16} {str(r['best_epoch'] or '-'):>8} "
                     f"{r['minutes']:>8.1f} {ips:>9}")  # fmt: skip
    return "\n".join(lines)


def plot_compare(runs: dict[str, Sequence[dict[str, Any]]], out: str | Path, x: str = "time") -> Path:
    """Several runs on shared axes: training loss and validation accuracy (with 95% bands)."""
    plt = new_pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (name, rows) in enumerate(runs.items()):
        color = f"C{i % 10}"
        xs, ys = _series(rows, "train_loss", x=x)
        ax_loss.plot(xs, ys, marker="o", ms=3, color=color, label=name)
        xs, ys, ci = _val_band(rows, x)
        if xs:
            ax_acc.plot(xs, ys, marker="o", ms=3, color=color, label=name)
            ax_acc.fill_between(xs, [a - c for a, c in zip(ys, ci)], [a + c for a, c in zip(ys, ci)], color=color, alpha=0.15)
    for ax, title, ylabel in ((ax_loss, "training loss", "loss"), (ax_acc, "validation accuracy", "accuracy (%)")):
        ax.set_xlabel(X_AXES[x][0])
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # runs without validation draw nothing here
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no validation", transform=ax.transAxes, ha="center", va="center", color="0.5")
    return save_figure(plt, fig, out)


def main(argv: list[str] | None = None) -> int:
    """``fsmtl plot RUN [RUN ...] [--out FILE] [--x time|step|epoch]``: draw a run's curves from its
    metrics.jsonl, or several runs on shared axes, and print a table of their best validation
    accuracy, budget and speed."""
    from fsmtl.core.cli import CliParser, plain_doc
    p = CliParser(prog="fsmtl plot", description=plain_doc(main.__doc__))
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run directories holding metrics.jsonl")
    p.add_argument("--out", type=Path, default=None,
                   help="PNG to write (default RUN/curves.png for one run, compare.png for several)")
    p.add_argument("--x", choices=tuple(X_AXES), default="time", help="x axis (default: wall-clock time)")
    a = p.parse_args(argv)
    loaded: dict[str, list[dict[str, Any]]] = {}
    for run in a.runs:
        name = run.name or str(run)
        while name in loaded:  # two runs of the same folder name: keep both, told apart
            name = f"{name}'"
        loaded[name] = load_metrics(run)
    print(format_summaries([run_summary(n, rows) for n, rows in loaded.items()]))
    if len(a.runs) == 1:
        rows = next(iter(loaded.values()))
        out = plot_curves(rows, a.out or a.runs[0] / "curves.png", title=str(a.runs[0].name), x=a.x)
    else:
        out = plot_compare(loaded, a.out or Path("compare.png"), x=a.x)
    print(f"wrote {out}")
    return 0
