"""``fsmtl bench all`` gathers every benchmark's JSON into one document."""

from __future__ import annotations

import json

import pytest

from fsmtl.benchmarks import bench_all
from fsmtl.core.errors import FsmtlError

_TINY = {"eval": ["--tasks", "20", "--sklearn-tasks", "10", "--runs", "1", "--dim", "32"],
         "pipeline": ["--sizes", "32", "--backends", "torch", "--runs", "1", "--warmup", "0", "--batches", "1",
                      "--step-model", ""]}


def test_bench_all_writes_one_json_with_each_benchmarks_rows(tmp_path, capsys):
    out = tmp_path / "all.json"
    assert bench_all.main(["--json", str(out), "--out", str(tmp_path / "each")], plan=_TINY) == 0
    doc = json.loads(out.read_text())
    assert json.loads((tmp_path / "each" / "pipeline.json").read_text())["rows"] == doc["results"]["pipeline"]["rows"]
    assert "fsmtl-bench-" not in capsys.readouterr().out  # no temporary paths printed
    assert set(doc["results"]) == {"eval", "pipeline"} and doc["errors"] == {}
    assert doc["results"]["eval"]["rows"][0]["tasks"] == 10
    assert doc["results"]["pipeline"]["rows"][0]["backend"] == "torch"
    assert doc["hardware"]["cpu_count"] >= 1


def test_a_failing_benchmark_is_recorded_and_the_others_still_run(tmp_path):
    out = tmp_path / "all.json"
    plan = {"eval": ["--tasks", "0"], "pipeline": _TINY["pipeline"]}
    assert bench_all.main(["--json", str(out), "--out", str(tmp_path / "each")], plan=plan) == 1
    doc = json.loads(out.read_text())
    assert "eval" in doc["errors"] and "pipeline" in doc["results"]


def test_bench_all_rejects_an_unknown_benchmark_name(tmp_path):
    with pytest.raises(FsmtlError, match="--only: unknown"):
        bench_all.main(["--only", "nope", "--json", str(tmp_path / "x.json"), "--out", str(tmp_path / "each")])
