"""Closed-form ridge regression to one-hot targets (R2-D2's head), batched through the S x S kernel."""

from __future__ import annotations

import torch
from torch import Tensor

from fsmtl.models.heads.checks import l2_normalize, one_hot


def ridge_logits(
    support: Tensor, labels: Tensor, query: Tensor, ways: int, lam: float = 1.0, normalize: bool = True
) -> Tensor:
    """Scores float64 [T, Q, ways] of ``W = argmin ||X W^T - Y||^2 + lam ||W||^2`` (no intercept).

    Uses ``W^T = X^T (X X^T + lam I)^-1 Y``: an S x S solve per task instead of D x D, since a
    few-shot task has far fewer support points S than feature dimensions D.

    Args:
        support: float [T, S, D]; labels: int64 [T, S] in [0, ways); query: float [T, Q, D].
        lam: the L2 penalty (> 0).
    """
    if lam <= 0:
        raise ValueError(f"ridge lam must be > 0, got {lam}")
    dt = torch.float64 if support.dtype == torch.float64 else torch.float32
    s, q = support.to(dt), query.to(dt)
    if normalize:
        s, q = l2_normalize(s), l2_normalize(q)
    k = (s @ s.transpose(1, 2)).to(torch.float64)
    eye = torch.eye(k.shape[-1], dtype=torch.float64, device=k.device)
    dual = torch.linalg.solve(k + lam * eye, one_hot(labels, ways, torch.float64))  # [T,S,ways]
    return (q @ s.transpose(1, 2)).to(torch.float64) @ dual
