"""``fsmtl bench algorithms``: step costs per algorithm, and the time-to-accuracy runs, at tiny sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fsmtl.benchmarks.bench_algorithms import available_algorithms, main
from fsmtl.core.cli import run_stage_main
from fsmtl.core.errors import FsmtlError
from fsmtl.train.algorithms import ALGORITHMS

TINY = ["--size", "16", "--ways", "2", "--shots", "1", "--queries", "1", "--tasks", "1",
        "--steps", "1", "--runs", "1", "--warmup", "0", "--precision", "fp32", "--device", "cpu"]


def test_step_costs_write_one_json_row_per_available_algorithm_and_a_bar_chart(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main([*TINY, "--skip-tta", "--out", str(tmp_path), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    expected, skipped = available_algorithms(list(ALGORITHMS))
    assert [r["algorithm"] for r in doc["rows"]] == expected
    assert set(doc["skipped"]) == set(skipped)
    assert {"mtl", "protonet", "metaoptnet"} <= set(expected)
    for r in doc["rows"]:
        assert r["s_per_step"] > 0 and r["images_per_s"] > 0 and r["batch_images"] == 4
        assert r["peak_mem_mb"] >= 0
    assert doc["rows"][0]["cost_vs_mtl"] == 1.0
    assert doc["tta_curves"] is None
    assert (tmp_path / "bench_step_cost.png").stat().st_size > 0  # beside the JSON, named after it


def test_time_to_accuracy_trains_each_algorithm_and_plots_its_validation_curve(tiny_shards: Path, tmp_path: Path) -> None:
    argv = [*TINY, "--size", "32", "--algorithms", "mtl,metaoptnet", "--minutes", "0.1", "--val-every", "1",
            "--val-tasks", "4", "--data", str(tiny_shards), "--out", str(tmp_path)]
    assert main(argv) == 0
    doc = json.loads((tmp_path / "algorithms.json").read_text())
    assert set(doc["tta_curves"]) == {"mtl", "metaoptnet"}
    for name, pts in doc["tta_curves"].items():
        assert pts and all(0.0 <= p["val_acc"] <= 1.0 and p["wall_s"] > 0 for p in pts), name
    assert [r["algorithm"] for r in doc["tta_summary"]] == ["mtl", "metaoptnet"]
    assert (tmp_path / "algorithms_time_to_accuracy.png").stat().st_size > 0
    assert "partial" not in doc


def test_unknown_algorithm_names_are_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(FsmtlError, match="unknown"):
        main([*TINY, "--skip-tta", "--algorithms", "mtl,reptile", "--out", str(tmp_path)])
    assert run_stage_main(main, [*TINY, "--skip-tta", "--algorithms", "reptile", "--out", str(tmp_path)]) == 2
