"""``fsmtl bench train`` runs end to end on CPU and writes its table's rows as JSON."""

from __future__ import annotations

import json
from pathlib import Path

from fsmtl.benchmarks.bench_train import main


def test_bench_train_writes_fp32_and_bf16_rows_and_the_data_wait(tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    assert main(["--model", "conv4", "--size", "32", "--no-memory", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [r["config"] for r in doc["rows"]] == ["fp32-eager", "bf16-cl"]
    assert all(r["images_per_s"] > 0 and r["batch_images"] == 50 for r in doc["rows"])
    assert doc["rows"][0]["speedup_vs_fp32_eager"] == 1.0
    assert 0.0 <= doc["data_wait"]["data_wait_frac"] <= 1.0
    assert doc["hardware"]["device"] == "cpu"
    # FLOPs counted and utilisation over the measured matmul peaks
    assert doc["flops"]["flops_per_step"] == 50 * doc["flops"]["flops_per_image"]
    assert all(0.0 < r["mfu"] and r["model_tflops"] > 0 for r in doc["rows"])
    assert set(doc["matmul_peak_tflops"]) == {"float32", "bfloat16"}


def test_step_flops_are_counted_as_the_convolutions_and_products_they_are() -> None:
    import torch

    from fsmtl.benchmarks.bench_train import count_step_flops

    # Conv-4 at 32x32: four 3x3 convolutions (3->64 at 32 px, then 64->64 at 16, 8, 4 px)
    fwd = sum(2 * cin * 64 * 9 * s * s for cin, s in ((3, 32), (64, 16), (64, 8), (64, 4)))
    f = count_step_flops("conv4", 32, 1, torch.device("cpu"))
    assert f["forward_flops_per_image"] == fwd
    # the backward pass: weight gradients of every conv (1x) and input gradients of all but the
    # first (1x); plus the head's logits and their two gradients (2 * 5 ways * 256 dims each)
    first = 2 * 3 * 64 * 9 * 32 * 32
    head = 3 * 2 * 5 * 256
    assert f["flops_per_image"] == 3 * fwd - first + head
