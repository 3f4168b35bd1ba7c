"""MetaOptNet's multi-class SVM head (Crammer-Singer), batched, differentiable w.r.t. the features.

Primal: min_W 0.5 ||W||^2 + C sum_i xi_i  s.t.  w_{y_i}.x_i - w_m.x_i >= 1 - [m == y_i] - xi_i.
Dual (one alpha_i in R^ways per support point): min 0.5 sum_ij K_ij alpha_i.alpha_j - sum_i alpha_i.y_i
subject to alpha_i <= C y_i and sum_m alpha_im = 0, and then W = alpha^T X. Writing
u_i = C y_i - alpha_i makes each constraint set a simplex scaled by C, so the dual is solved by
accelerated projected gradient (FISTA) with an exact sort-based simplex projection. Every step
is plain tensor arithmetic, so unrolled iterations give gradients for meta-training.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fsmtl.models.heads.checks import one_hot


def project_scaled_simplex(v: Tensor, total: float) -> Tensor:
    """Euclidean projection of each row of v [..., k] onto {u >= 0, sum(u) = total}."""
    mu, _ = v.sort(dim=-1, descending=True)
    cssv = mu.cumsum(-1) - total
    j = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype, device=v.device)
    rho = ((mu - cssv / j) > 0).sum(-1, keepdim=True)  # >= 1 always
    theta = cssv.gather(-1, rho - 1) / rho.to(v.dtype)
    return (v - theta).clamp_min(0)


def svm_dual(kernel: Tensor, y: Tensor, C: float, iters: int) -> Tensor:
    """Solve the Crammer-Singer dual for each task.

    Args:
        kernel: float [T, S, S] support Gram matrix.
        y: float [T, S, ways] one-hot support labels.
        C: the SVM's C (> 0).
        iters: FISTA iterations.

    Returns:
        alpha float [T, S, ways]; W = alpha^T X.
    """
    with torch.no_grad():  # the step size only sets the pace, it need not carry gradients
        lip = torch.linalg.eigvalsh(kernel.to(torch.float64))[:, -1].clamp_min(1e-12)
        step = (1.0 / lip).to(kernel.dtype)[:, None, None]
    cy = C * y
    alpha = torch.zeros_like(y)
    beta, t = alpha, 1.0
    for _ in range(iters):
        grad = kernel @ beta - y
        nxt = cy - project_scaled_simplex(cy - (beta - step * grad), C)
        t_next = 0.5 * (1.0 + (1.0 + 4.0 * t * t) ** 0.5)
        beta = nxt + ((t - 1.0) / t_next) * (nxt - alpha)
        alpha, t = nxt, t_next
    return alpha


def svm_logits(
    support: Tensor,
    support_labels: Tensor,
    query: Tensor,
    C: float = 0.1,
    iters: int = 300,
    ways: int | None = None,
) -> Tensor:
    """Crammer-Singer SVM scores float [T, Q, ways], differentiable w.r.t. support and query.

    Args:
        support: float [T, S, D] features (used as given: normalise first if wanted).
        support_labels: int64 [T, S] in [0, ways).
        query: float [T, Q, D].
        C: the SVM's C (MetaOptNet's default 0.1).
        iters: unrolled FISTA iterations (MetaOptNet ran its QP solver for 15 at training time
            and 3 at test time; more give a tighter optimum).
        ways: classes; ``support_labels.max() + 1`` when None.
    """
    if C <= 0 or iters < 1:
        raise ValueError(f"svm needs C > 0 and iters >= 1, got C={C}, iters={iters}")
    ways = int(support_labels.max()) + 1 if ways is None else ways
    k = support @ support.transpose(1, 2)
    alpha = svm_dual(k, one_hot(support_labels, ways, support.dtype), float(C), iters)
    return (query @ support.transpose(1, 2)) @ alpha
