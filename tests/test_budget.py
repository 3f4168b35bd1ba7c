"""Schedules laid over a run's budget: the fraction spent, the lr factor, and real runs that end annealed."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fsmtl.core.cli import run_stage_main
from fsmtl.core.errors import FsmtlError
from fsmtl.train.__main__ import main
from fsmtl.train.budget import ONE_CYCLE_START, Budget, budget_factor
from fsmtl.train.config import TrainConfig
from fsmtl.train.runlog import read_metrics
from fsmtl.train.run import train
from test_train_run import tiny_cfg


def test_the_fraction_spent_is_the_largest_over_the_budgets_given() -> None:
    b = Budget(max_steps=100, max_epochs=None, max_seconds=None, steps_per_epoch=10)
    assert b.fraction(25, 0.0) == 0.25 and b.fraction(250, 0.0) == 1.0
    both = Budget(max_steps=100, max_epochs=5, max_seconds=60.0, steps_per_epoch=10)  # epochs: 50 steps
    assert both.fraction(10, 0.0) == 0.2 and both.fraction(10, 30.0) == 0.5  # time binds at 30 s
    # a resumed time budget covers what was left when it started, and never goes back
    timed = Budget(None, None, 100.0, 10)
    assert timed.fraction(0, 50.0, start=0.6) == pytest.approx(0.8)
    assert timed.fraction(0, 0.0, start=0.6) == 0.6 and timed.fraction(0, 1e9, start=0.6) == 1.0
    assert not Budget(None, None, None, 10).bounded


def test_the_factor_warms_up_then_anneals_to_the_floor_at_the_end() -> None:
    assert budget_factor(0.0) == 1.0 and budget_factor(1.0) == 0.0 and budget_factor(0.5) == pytest.approx(0.5)
    assert budget_factor(1.0, floor=0.05) == pytest.approx(0.05) and budget_factor(2.0, floor=0.05) == pytest.approx(0.05)
    assert budget_factor(0.0, warmup=0.1) == ONE_CYCLE_START and budget_factor(0.1, warmup=0.1) == pytest.approx(1.0)
    xs = [i / 100 for i in range(101)]
    ys = [budget_factor(x, warmup=0.2, floor=0.01) for x in xs]
    assert all(a <= b for a, b in zip(ys[:21], ys[1:21]))  # rising through the warm-up
    assert all(a >= b for a, b in zip(ys[20:], ys[21:]))  # then never rising again
    assert ys[-1] == pytest.approx(0.01) and math.isclose(max(ys), 1.0)


def test_budget_needs_a_budget() -> None:
    with pytest.raises(FsmtlError, match="--scheduler budget: expected a budget"):
        TrainConfig(data="x", scheduler="budget").check()
    with pytest.raises(FsmtlError, match="--warmup-frac"):
        TrainConfig(data="x", scheduler="budget", max_steps=3, warmup_frac=1.0).check()


def test_a_run_bounded_by_epochs_ends_at_the_floor(tiny_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny_cfg(tiny_shards, out, scheduler="budget", lr=1e-3, lr_floor=0.1, max_epochs=2))
    rows = read_metrics(out)
    # the record's lr is the one its epoch's last step trained with: the budget's middle, then its end
    assert rows[0]["lr"] == pytest.approx(1e-3 * budget_factor(0.5, floor=0.1))
    assert rows[1]["lr"] == pytest.approx(1e-4)


def test_a_run_stopped_by_its_budget_mid_epoch_validates_and_keeps_its_final_weights(tiny_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # epochs of 4 steps; 6 steps stop the run half-way through epoch 2
    summary = train(tiny_cfg(tiny_shards, out, scheduler="budget", max_epochs=None, max_steps=6, lr_floor=0.0))
    assert summary["step"] == 6 and summary["reason"].startswith("max_steps")
    rows = read_metrics(out)
    assert [r.get("final", False) for r in rows] == [False, True]
    final = rows[-1]
    assert final["step"] == 6 and final["epoch_step"] == 2 and final["val_acc"] is not None
    assert final["lr"] == 0.0  # annealed: the last step trained at the floor
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert last["budget_frac"] == 1.0 and last["step"] == 6
    if final["val_acc"] > rows[0]["val_acc"]:  # the final weights are kept as best.pt when they are best
        assert best["step"] == 6
    else:
        assert best["step"] == 4 and best["best_val_acc"] == rows[0]["val_acc"]
    # a larger budget resumes the schedule from where it stopped: the lr never goes back up past it
    assert run_stage_main(main, ["--resume", str(out), "--max-steps", "8", "--no-progress"]) == 0
    rows = read_metrics(out)
    assert rows[-1]["step"] == 8 and rows[-1]["lr"] == pytest.approx(0.0)
