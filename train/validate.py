"""Validation on fixed episodes: the evaluation issue's logistic-regression head when ``eval`` is
installed, else a nearest-centroid stand-in (logged as "proto-standin")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipelines.episodes import sample_episode_indices
from pipelines.transforms import normalize_batch

VAL_SEED_OFFSET = 7919  # validation episodes never share a generator stream with training


@dataclass
class ValSettings:
    ways: int
    shots: int
    queries: int
    n_tasks: int
    batch_tasks: int
    seed: int


def centroid_accuracy(features: Tensor, shots: int) -> Tensor:
    """Nearest-centroid accuracy of each task, on L2-normalised features.

    Args:
        features: float [T, ways, shots + queries, D]; the first ``shots`` of each way are support.

    Returns:
        float32 [T], the fraction of queries classified correctly.
    """
    f = F.normalize(features.float(), dim=-1)
    t, ways, per, d = f.shape
    protos = f[:, :, :shots].mean(2)  # [T, ways, D]
    query = f[:, :, shots:].reshape(t, -1, d)  # [T, ways*Q, D]
    pred = torch.cdist(query, protos).argmin(-1)  # [T, ways*Q]
    target = torch.arange(ways, device=f.device).repeat_interleave(per - shots)
    return (pred == target).float().mean(-1)


@torch.no_grad()
def embed_rows(model: nn.Module, images: np.ndarray, rows: Tensor, mean: Sequence[float], std: Sequence[float],
               device: torch.device, amp_dtype: torch.dtype | None) -> Tensor:
    """Features of ``images[rows]``: float32 [*rows.shape, D] (model in eval mode, no augmentation)."""
    flat = rows.reshape(-1).numpy()
    x = torch.from_numpy(np.ascontiguousarray(images[flat])).to(device, non_blocking=True)
    x = normalize_batch(x, mean, std)
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        feats = model(x)
    return feats.float().reshape(*rows.shape, -1)


def standin_validator(split: Any, mean: Sequence[float], std: Sequence[float], s: ValSettings,
                      device: torch.device, amp_dtype: torch.dtype | None) -> Callable[[nn.Module], dict]:
    """Nearest-centroid validation on ``s.n_tasks`` episodes drawn once (the same every epoch)."""
    g = torch.Generator().manual_seed(s.seed + VAL_SEED_OFFSET)
    offsets = torch.from_numpy(np.asarray(split.class_offsets, dtype=np.int64))
    rows, _ = sample_episode_indices(offsets, s.n_tasks, s.ways, s.shots + s.queries, g)

    def validate(model: nn.Module) -> dict:
        accs = [
            centroid_accuracy(embed_rows(model, split.images, chunk, mean, std, device, amp_dtype), s.shots)
            for chunk in rows.split(s.batch_tasks)
        ]
        acc = torch.cat(accs).cpu().double()
        ci = 1.96 * float(acc.std()) / math.sqrt(acc.numel()) if acc.numel() > 1 else 0.0
        return {"acc": float(acc.mean()), "ci95": ci, "head": "proto-standin"}

    return validate


def make_validator(split: Any, mean: Sequence[float], std: Sequence[float], s: ValSettings,
                   device: torch.device, amp_dtype: torch.dtype | None) -> Callable[[nn.Module], dict]:
    """``validate(model) -> {"acc", "ci95", "head"}``; ``acc`` is a fraction in [0, 1].

    Uses ``eval.protocol.evaluate_backbone(..., heads=["logreg"])`` when that module imports (the
    seed's test method), else :func:`standin_validator`. Either way the episodes come from a fixed
    seed, so every epoch sees the same validation tasks.
    """
    try:
        from eval.protocol import evaluate_backbone
    except ImportError:
        return standin_validator(split, mean, std, s, device, amp_dtype)

    def validate(model: nn.Module) -> dict:
        out = evaluate_backbone(
            model, split, mean, std, ways=s.ways, shots=s.shots, queries=s.queries, n_tasks=s.n_tasks,
            heads=["logreg"], seed=s.seed + VAL_SEED_OFFSET, device=device,
            dtype=amp_dtype or torch.float32, batch_tasks=s.batch_tasks,
        )  # fmt: skip
        res = out["logreg"]  # eval reports percent; the trainer logs fractions
        return {"acc": float(res["acc"]) / 100.0, "ci95": float(res["ci95"]) / 100.0, "head": "logreg"}

    return validate
