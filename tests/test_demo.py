"""``fsmtl demo`` runs every stage end to end and writes its report (tiny settings)."""

from __future__ import annotations

import json

from fsmtl.cli import main as cli
def test_demo_runs_every_stage_and_writes_a_report_with_plots(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = cli(["demo", "--out", str(out), "--classes", "8,5,5", "--per-class", "20", "--minutes", "0.3",
              "--tasks", "20", "--no-bench", "--device", "cpu"])
    assert rc == 0
    report = (out / "report.md").read_text()
    assert "## Test accuracy" in report and "| 5 | logreg |" in report
    for png in ("curves.png", "heads_1shot.png", "heads_5shot.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    ev = json.loads((out / "eval.json").read_text())
    assert set(ev["results"]) == {"1", "5"}
    assert 0.0 <= ev["results"]["5"]["logreg"]["acc"] <= 100.0
    assert "fsmtl demo finished" in capsys.readouterr().out


def test_demo_reports_a_budget_that_ended_the_first_epoch_and_refuses_data_of_another_shape(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--classes", "8,5,5", "--per-class", "20", "--minutes", "0.002",
            "--tasks", "10", "--no-bench", "--device", "cpu"]
    assert cli(args) == 0  # stopped at the first host sync (step 20 of 60): evaluated from last.pt
    report = (out / "report.md").read_text()
    assert "no epoch completed" in report and "| 5 | logreg |" in report and not (out / "curves.png").exists()
    assert cli([*args, "--size", "28"]) == 2


def test_demo_times_the_back_ends_in_a_fresh_process(tiny_shards, tmp_path):
    from fsmtl.demo import _bench

    doc = _bench(tiny_shards, tmp_path)
    assert doc is not None
    assert {"torch", "reference"} <= {r["backend"] for r in doc["rows"]}
    assert all(r["images_per_s"] > 0 for r in doc["rows"])
