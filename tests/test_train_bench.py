"""``fsmtl bench train`` runs end to end on CPU and writes its table's rows as JSON."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.bench_train import main


def test_bench_train_writes_fp32_and_bf16_rows_and_the_data_wait(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    assert main(["--model", "conv4", "--size", "32", "--no-memory", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [r["config"] for r in doc["rows"]] == ["fp32-eager", "bf16-cl"]
    assert all(r["images_per_s"] > 0 and r["batch_images"] == 50 for r in doc["rows"])
    assert doc["rows"][0]["speedup_vs_fp32_eager"] == 1.0
    assert 0.0 <= doc["data_wait"]["data_wait_frac"] <= 1.0
    assert doc["hardware"]["device"] == "cpu"
