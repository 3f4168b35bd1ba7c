"""``fsmtl plot`` and the report helpers draw from a run's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fsmtl.cli import main as cli
from fsmtl.core.errors import FsmtlError
from fsmtl.core.plots import plot_bars
from fsmtl.report import load_metrics


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
    err = capsys.readouterr().err
    assert f"{tmp_path / 'metrics.jsonl'}: not found (expected the metrics of a training run)" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("mark", ["checkpoints", "config.json"])
def test_plot_of_a_run_that_has_not_finished_an_epoch_says_so(tmp_path, capsys, mark):
    run = tmp_path / "run"
    run.mkdir()
    if mark == "checkpoints":
        (run / "checkpoints").mkdir()
    else:
        (run / "config.json").write_text("{}")
    assert cli(["plot", str(run)]) == 2
    err = capsys.readouterr().err
    assert err == f"fsmtl: error: {run}: no epoch has finished yet (metrics.jsonl is written after each epoch)\n"


def test_the_validation_band_is_drawn_in_the_validation_curves_colour(tmp_path, monkeypatch):
    from matplotlib.colors import to_rgb

    from fsmtl import report

    figs = []
    monkeypatch.setattr(report, "save_figure", lambda plt, fig, out: figs.append(fig) or Path(out))
    rows = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.3 + 0.05 * e, "val_acc": 0.4 + 0.04 * e,
             "val_ci95": 0.02, "wall_s": 30.0 * e} for e in range(1, 4)]  # fmt: skip
    report.plot_curves(rows, tmp_path / "c.png")
    ax_acc = figs[0].axes[1]
    train, val = ax_acc.get_lines()
    (band,) = ax_acc.collections
    assert val.get_label() == "validation"
    assert tuple(band.get_facecolor()[0][:3]) == pytest.approx(to_rgb(val.get_color()))
    assert to_rgb(train.get_color()) != to_rgb(val.get_color())


def test_load_metrics_names_the_line_that_is_not_json(tmp_path):
    run = _run(tmp_path, [{"epoch": 1}])
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{not json\n{"epoch": 3}\n')
    with pytest.raises(FsmtlError, match=r"metrics.jsonl:2"):
        load_metrics(run)


def test_a_last_line_cut_off_by_a_crash_is_skipped_with_a_warning(tmp_path, capsys):
    run = _run(tmp_path, [{"epoch": 1}, {"epoch": 2}])
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_lo')
    assert [r["epoch"] for r in load_metrics(run)] == [1, 2]
    assert "incomplete last line" in capsys.readouterr().err


def test_plot_bars_writes_a_png(tmp_path):
    out = plot_bars(["a", "b"], [1.0, 10.0], tmp_path / "b.png", "images/s", "t", log=True)
    assert out.stat().st_size > 1000


def test_plot_of_several_runs_overlays_them_and_tabulates_the_best_epoch(tmp_path, capsys):
    runs = []
    for name, peak in (("a", 2), ("b", 3)):
        rows = [{"epoch": e, "step": 10 * e, "train_loss": 1.0 / e, "val_acc": 0.5 + (0.1 if e == peak else 0.0),
                 "val_ci95": 0.02, "images_per_s": 100.0 * e, "wall_s": 60.0 * e} for e in range(1, 5)]
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs.append(str(run))
    out = tmp_path / "cmp.png"
    assert cli(["plot", *runs, "--out", str(out), "--x", "step"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    table = {ln.split()[0]: ln.split() for ln in capsys.readouterr().out.splitlines() if ln.split()[0] in ("a", "b")}
    # run, epochs, steps, best val % +- ci, at epoch, minutes, median images/s
    assert table["a"] == ["a", "4", "40", "60.00", "+-", "2.00", "2", "4.0", "300"]
    assert table["b"][6] == "3"
