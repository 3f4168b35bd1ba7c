"""Validation on fixed episodes with the seed's test method (the ``logreg`` head of ``models/heads``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from fsmtl.train.config import TrainConfig
from fsmtl.train.protocol import evaluate_backbone

VAL_SEED_OFFSET = 7919  # validation episodes never share a generator stream with training


@dataclass
class ValSettings:
    ways: int
    shots: int
    queries: int
    n_tasks: int
    batch_tasks: int
    seed: int
    within_group: bool = False
    C: float = TrainConfig.test_C  # the logreg head's inverse L2 strength


def make_validator(split: Any, mean: Sequence[float], std: Sequence[float], s: ValSettings,
                   device: torch.device, amp_dtype: torch.dtype | None) -> Callable[[nn.Module], dict]:
    """``validate(model) -> {"acc", "ci95", "head"}``; ``acc`` is a fraction in [0, 1].

    ``fsmtl.train.protocol.evaluate_backbone(..., heads=["logreg"])``: L2-normalised features, one logistic
    regression per task. The episodes come from a fixed seed, so every epoch sees the same tasks.
    """

    def validate(model: nn.Module) -> dict:
        out = evaluate_backbone(
            model, split, mean, std, ways=s.ways, shots=s.shots, queries=s.queries, n_tasks=s.n_tasks,
            heads=["logreg"], head_options={"logreg": {"C": s.C}}, seed=s.seed + VAL_SEED_OFFSET, device=device,
            dtype=amp_dtype or torch.float32, batch_tasks=s.batch_tasks, within_group=s.within_group,
        )  # fmt: skip
        res = out["logreg"]  # eval reports percent; the trainer logs fractions
        return {"acc": float(res["acc"]) / 100.0, "ci95": float(res["ci95"]) / 100.0, "head": "logreg"}

    return validate
