"""``fsmtl bench pipeline`` runs end to end on tiny shards and writes its table's rows as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fsmtl.benchmarks import bench_pipeline
from fsmtl.core.errors import FsmtlError


def test_bench_pipeline_writes_rows_with_speedups_and_hardware(tiny_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["--data", str(tiny_shards), "--backends", "torch,torch-ops,seed-literal", "--tasks", "2",
            "--ways", "3", "--shots", "2", "--queries", "2", "--runs", "1", "--warmup", "0",
            "--batches", "1", "--step-model", "", "--json", str(out)]  # fmt: skip
    assert bench_pipeline.main(argv) == 0
    doc = json.loads(out.read_text())
    assert [r["backend"] for r in doc["rows"]] == ["torch", "torch-ops", "seed-literal"]
    for r in doc["rows"]:
        assert r["size"] == 32 and r["images_per_s"] > 0 and r["ms_per_batch"] > 0
        assert r["x_vs_seed-literal"] > 0
    assert doc["hardware"]["cpu_count"] >= 1 and "packages" in doc


def test_bench_pipeline_rejects_an_unknown_back_end() -> None:
    with pytest.raises(FsmtlError, match="--backends"):
        bench_pipeline.main(["--backends", "torch,warp"])


def test_bench_traffic_counts_fewer_device_ops_per_batch_when_batches_are_grouped(tmp_path: Path) -> None:
    from fsmtl.benchmarks.bench_traffic import main as traffic_main

    out = tmp_path / "traffic.json"
    assert traffic_main(["--sizes", "16", "--tasks", "2", "--batches", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    one, grouped = sorted(rows, key=lambda r: r["batches_per_launch"])
    assert one["batches_per_launch"] == 1 and grouped["batches_per_launch"] == 2048 // 100
    assert grouped["device_ops_per_batch"] < one["device_ops_per_batch"] / 2
    assert one["aten_mb_per_image"] > one["kernel_bytes_per_image"] / 1e6  # the torch ops move more than the kernel
