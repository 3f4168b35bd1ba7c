"""Nearest-centroid heads (prototypical networks at test time), cosine or Euclidean, batched over tasks."""

from __future__ import annotations

import torch
from torch import Tensor

from fsmtl.models.heads.checks import l2_normalize, one_hot


def class_centroids(support: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Mean support feature per class: float [T, ways, D] from support [T,S,D], labels int64 [T,S]."""
    y = one_hot(labels, ways, support.dtype)  # [T,S,ways]
    sums = y.transpose(1, 2) @ support
    return sums / y.sum(1).unsqueeze(-1)


def proto_logits(
    support: Tensor, labels: Tensor, query: Tensor, ways: int, metric: str = "cosine", normalize: bool = True
) -> Tensor:
    """Scores float [T, Q, ways]: cosine similarity to, or minus squared distance from, each centroid.

    Args:
        support: float [T, S, D]; labels: int64 [T, S] in [0, ways); query: float [T, Q, D].
        metric: "cosine" or "euclidean".
        normalize: L2-normalise features before averaging (the cosine head compares directions
            either way; this decides whether long support vectors weigh more in the centroid).
    """
    dt = torch.float64 if support.dtype == torch.float64 else torch.float32
    s, q = support.to(dt), query.to(dt)
    if normalize:
        s, q = l2_normalize(s), l2_normalize(q)
    c = class_centroids(s, labels, ways)
    if metric == "cosine":
        return l2_normalize(q) @ l2_normalize(c).transpose(1, 2)
    if metric == "euclidean":
        # |q - c|^2 = |q|^2 - 2 q.c + |c|^2; the |q|^2 term is the same for every class
        return 2.0 * q @ c.transpose(1, 2) - c.square().sum(-1).unsqueeze(1)
    raise ValueError(f"proto metric must be 'cosine' or 'euclidean', got {metric!r}")
