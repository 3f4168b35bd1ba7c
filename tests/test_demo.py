"""``fsmtl demo`` runs every stage end to end and writes its report (tiny settings)."""

from __future__ import annotations

import json

from fsmtl.cli import main as cli
def test_demo_runs_every_stage_and_writes_a_report_with_plots(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = cli(["demo", "--out", str(out), "--source", "synthetic", "--classes", "8,5,5", "--per-class", "20", "--minutes", "0.3",
              "--tasks", "20", "--no-bench", "--device", "cpu"])
    assert rc == 0
    report = (out / "report.md").read_text()
    assert "## Test accuracy" in report and "| 5-way 5-shot | logreg |" in report
    for png in ("heads_5way_1shot.png", "heads_5way_5shot.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # curves once an epoch completed (0.3 minutes is enough on an idle 2-core CPU, not on a loaded one)
    rows = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    epochs_done = any(not r.get("final") for r in rows)
    assert (out / "curves.png").is_file() == epochs_done and ("![training curves](curves.png)" in report) == epochs_done
    if epochs_done:
        assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    ev = json.loads((out / "eval_5way_5shot.json").read_text())
    assert set(ev["results"]) == {"5"}
    assert 0.0 <= ev["results"]["5"]["logreg"]["acc"] <= 100.0
    assert "fsmtl demo finished" in capsys.readouterr().out


def test_demo_reports_a_budget_that_ended_the_first_epoch_and_refuses_data_of_another_shape(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--source", "synthetic", "--classes", "8,5,5", "--per-class", "20", "--minutes", "0.002",
            "--tasks", "10", "--no-bench", "--device", "cpu"]
    assert cli(args) == 0  # stopped at the first host sync (step 20 of 60): evaluated from last.pt
    report = (out / "report.md").read_text()
    assert "no epoch completed" in report and "| 5-way 5-shot | logreg |" in report and not (out / "curves.png").exists()
    assert cli([*args, "--size", "28"]) == 2


def test_demo_times_the_back_ends_in_a_fresh_process(tiny_shards, tmp_path):
    from fsmtl.demo import _bench

    doc = _bench(tiny_shards, tmp_path)
    assert doc is not None
    assert {"torch", "reference"} <= {r["backend"] for r in doc["rows"]}
    assert all(r["images_per_s"] > 0 for r in doc["rows"])


def test_the_default_demo_trains_on_embedded_omniglot_and_tests_unseen_alphabets(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli(["demo", "--out", str(out), "--minutes", "0.15", "--tasks", "30", "--no-bench", "--device", "cpu"]) == 0
    meta = json.loads((out / "data" / "meta.json").read_text())
    assert meta["benchmark"] == "omniglot"
    report = (out / "report.md").read_text()
    assert "| 20-way 1-shot, within one alphabet | logreg |" in report and "| 5-way 5-shot, within one alphabet | logreg |" in report
    ev = json.loads((out / "eval_20way_1shot.json").read_text())
    assert (ev["split"], ev["config"]["ways"], ev["config"]["within_group"]) == ("test", 20, True)
    assert ev["results"]["1"]["logreg"]["acc"] > 2 * 100 / 20  # trained features beat twice chance
    assert "(chance 5.0%)" in capsys.readouterr().out
    cfg = json.loads((out / "train" / "config.json").read_text())  # the preset's recipe, validated on Korean
    assert (cfg["preset"], cfg["trainval"], cfg["val_split"]) == ("omniglot", False, "val")
    assert cli(["demo", "--out", str(out), "--classes", "8,5,5"]) == 2  # synthetic-only flags are refused


def test_the_embedded_omniglot_zips_are_checked_against_their_sums(tmp_path):
    import shutil

    import pytest

    from fsmtl.core.errors import FsmtlError
    from fsmtl.core.embedded import EMBEDDED_OMNIGLOT, check_embedded_omniglot

    assert [p.name for p in check_embedded_omniglot()] == ["images_background_small1.zip", "images_background_small2.zip"]
    assert (EMBEDDED_OMNIGLOT / "LICENSE").read_text().startswith("The MIT License")
    copy = tmp_path / "omniglot"
    shutil.copytree(EMBEDDED_OMNIGLOT, copy)
    z = copy / "images_background_small2.zip"
    data = bytearray(z.read_bytes())
    data[1000] ^= 1
    z.write_bytes(bytes(data))
    with pytest.raises(FsmtlError, match="images_background_small2.zip: SHA256"):
        check_embedded_omniglot(copy)
