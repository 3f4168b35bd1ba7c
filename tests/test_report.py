"""``fsmtl plot`` and the report helpers draw from a run's files."""

from __future__ import annotations

import json

import pytest

from fsmtl.cli import main as cli
from fsmtl.errors import FsmtlError
from fsmtl.report import load_metrics, plot_bars


def _run(tmp_path, rows):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_plot_writes_a_png_of_the_curves(tmp_path):
    rows = [{"epoch": e, "train_loss": 1.5 - 0.1 * e, "train_acc": 0.3 + 0.05 * e, "val_acc": 0.4 + 0.04 * e,
             "val_ci95": 0.01, "wall_s": 30.0 * e} for e in range(1, 5)]
    run = _run(tmp_path, rows)
    assert cli(["plot", str(run)]) == 0
    png = run / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_of_a_run_without_metrics_is_a_one_line_error(tmp_path, capsys):
    assert cli(["plot", str(tmp_path)]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err


def test_load_metrics_names_the_line_that_is_not_json(tmp_path):
    run = _run(tmp_path, [{"epoch": 1}])
    with open(run / "metrics.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(FsmtlError, match=r"metrics.jsonl:2"):
        load_metrics(run)


def test_plot_bars_writes_a_png(tmp_path):
    out = plot_bars(["a", "b"], [1.0, 10.0], tmp_path / "b.png", "images/s", "t", log=True)
    assert out.stat().st_size > 1000
