"""The run's logistic-regression C (--test-C): validation fits with it and fsmtl eval defaults to it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fsmtl.core.cli import run_stage_main
from fsmtl.core.errors import FsmtlError
from fsmtl.eval.config import EvalConfig
from fsmtl.models import build_model
from fsmtl.preprocess.shard_reader import open_shards
from fsmtl.train.config import TrainConfig
from fsmtl.train.protocol import evaluate_backbone
from fsmtl.train.validate import VAL_SEED_OFFSET, ValSettings, make_validator
from test_eval_protocol import write_run


def test_eval_takes_the_runs_C_unless_told(tiny_shards: Path, tmp_path: Path) -> None:
    cfg = json.loads((write_run(tmp_path / "r", tiny_shards) / "config.json").read_text())
    assert "test_C" not in cfg and TrainConfig().test_C == 3.0  # the seed's, also for runs from before the field
    assert EvalConfig().for_run({**cfg, "test_C": 10.0}).C == 10.0
    assert EvalConfig(C=0.5).for_run({**cfg, "test_C": 10.0}).C == 0.5
    assert EvalConfig().for_run(cfg).C == 3.0
    assert EvalConfig().head_options() == {"logreg": {"C": 3.0}}


def test_test_C_is_checked() -> None:
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(FsmtlError, match="--test-C"):
            TrainConfig(data="d", test_C=bad).check()
    assert TrainConfig(data="d", test_C=10.0).check().test_C == 10.0


def test_validation_fits_with_the_runs_C(tiny_shards: Path) -> None:
    shards = open_shards(tiny_shards)
    split = shards.split("val")
    torch.manual_seed(0)
    model = build_model("conv4", in_channels=3, image_size=32)
    accs = {}
    for c in (1e-4, 100.0):
        vs = ValSettings(ways=5, shots=1, queries=3, n_tasks=20, batch_tasks=10, seed=2, C=c)
        got = make_validator(split, shards.mean, shards.std, vs, torch.device("cpu"), None)(model)
        ref = evaluate_backbone(model, split, shards.mean, shards.std, ways=5, shots=1, queries=3, n_tasks=20,
                                heads=["logreg"], head_options={"logreg": {"C": c}}, seed=2 + VAL_SEED_OFFSET,
                                batch_tasks=10)  # fmt: skip
        assert got["acc"] == pytest.approx(ref["logreg"]["acc"] / 100.0)
        accs[c] = ref["logreg"]["per_task"]
    assert accs[1e-4] != accs[100.0]  # C reaches the fit: a different C, different predictions


def test_eval_report_records_the_C_used(tiny_shards: Path, tmp_path: Path) -> None:
    from fsmtl.eval.__main__ import main as eval_main

    run = write_run(tmp_path / "r", tiny_shards)
    out = tmp_path / "e.json"
    assert run_stage_main(eval_main, ["--run", str(run), "--tasks", "4", "--shots", "1", "--queries", "2",
                                      "--json", str(out)]) == 0  # fmt: skip
    assert json.loads(out.read_text())["config"]["C"] == 3.0  # the run does not say: the seed's
    assert run_stage_main(eval_main, ["--run", str(run), "--tasks", "4", "--shots", "1", "--queries", "2",
                                      "--C", "7", "--json", str(out)]) == 0  # fmt: skip
    assert json.loads(out.read_text())["config"]["C"] == 7.0
    assert run_stage_main(eval_main, ["--run", str(run), "--C", "0"]) == 2
