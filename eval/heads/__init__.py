"""Adaptation heads: from support features and labels to predicted query labels, many tasks at once.

``adapt(support, labels, query, head="logreg", **options)`` is the one entry point; every head is
also importable on its own (``fit_logreg``, ``proto_logits``, ``ridge_logits``, ``svm_logits``).
The ``finetune`` head needs the network, not features, so it lives in ``eval.heads.finetune``.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any, Callable

import torch
from torch import Tensor

from eval.heads.checks import as_task_batch, l2_normalize
from eval.heads.logreg import LogregFit, fit_logreg, fit_predict_logreg, logreg_logits
from eval.heads.proto import class_centroids, proto_logits
from eval.heads.ridge import ridge_logits
from eval.heads.svm import svm_logits
from fsmtl.errors import FsmtlError


def _logreg(s: Tensor, y: Tensor, q: Tensor, ways: int, C: float = 3.0, tol: float = 1e-6,
            max_iter: int = 100, normalize: bool = True) -> Tensor:
    # a convex fit, not differentiated through (its solver writes in place): features may carry grad
    s, q = s.detach(), q.detach()
    return logreg_logits(fit_logreg(s, y, ways, C=C, tol=tol, max_iter=max_iter, normalize=normalize), q)


def _proto(s: Tensor, y: Tensor, q: Tensor, ways: int, normalize: bool = True) -> Tensor:
    return proto_logits(s, y, q, ways, metric="cosine", normalize=normalize)


def _proto_euclidean(s: Tensor, y: Tensor, q: Tensor, ways: int, normalize: bool = True) -> Tensor:
    return proto_logits(s, y, q, ways, metric="euclidean", normalize=normalize)


def _ridge(s: Tensor, y: Tensor, q: Tensor, ways: int, lam: float = 1.0, normalize: bool = True) -> Tensor:
    return ridge_logits(s, y, q, ways, lam=lam, normalize=normalize)


def _svm(s: Tensor, y: Tensor, q: Tensor, ways: int, C: float = 0.1, iters: int = 300,
         normalize: bool = True) -> Tensor:
    dt = torch.float64 if s.dtype == torch.float64 else torch.float32
    s, q = s.to(dt), q.to(dt)
    if normalize:
        s, q = l2_normalize(s), l2_normalize(q)
    with torch.no_grad():
        return svm_logits(s, y, q, C=C, iters=iters, ways=ways)


def feature_heads() -> dict[str, Callable[..., Tensor]]:
    """Head name -> scores function ``(support, labels, query, ways, **options) -> float [T,Q,ways]``."""
    return {
        "logreg": _logreg,
        "proto": _proto,
        "proto_euclidean": _proto_euclidean,
        "ridge": _ridge,
        "svm": _svm,
    }


HEAD_NAMES: tuple[str, ...] = ("logreg", "proto", "proto_euclidean", "ridge", "svm", "finetune")


def head_options(head: str) -> dict[str, Any]:
    """The options a feature head takes, with their defaults."""
    fn = _lookup(head)
    params = list(inspect.signature(fn).parameters.values())[4:]
    return {p.name: p.default for p in params}


_POSITIVE = ("C", "lam", "tol")  # real options that must be > 0
_COUNTS = ("max_iter", "iters")  # integer options that must be >= 1


def check_options(head: str, options: dict[str, Any]) -> None:
    """Raise FsmtlError for a head option out of range (C <= 0, lam <= 0, iters < 1, ...)."""
    for name, value in options.items():
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)  # numpy scalars too
        if name in _POSITIVE and not (real and 0 < value < float("inf")):
            raise FsmtlError(f"head {head}: {name} must be a finite number > 0, got {value!r}")
        if name in _COUNTS and not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1):
            raise FsmtlError(f"head {head}: {name} must be an integer >= 1, got {value!r}")


def _lookup(head: str) -> Callable[..., Tensor]:
    heads = feature_heads()
    if head not in heads:
        extra = " ('finetune' needs the network: use eval.heads.finetune)" if head == "finetune" else ""
        raise FsmtlError(f"head: expected one of {', '.join(heads)}, got {head!r}{extra}")
    return heads[head]


def adapt_scores(
    support_features: Tensor, support_labels: Tensor, query_features: Tensor, head: str = "logreg",
    ways: int | None = None, **options: Any,
) -> Tensor:
    """Like :func:`adapt`, but returns the head's scores float [T?, Q, ways] instead of labels."""
    fn = _lookup(head)
    known = head_options(head)
    unknown = set(options) - set(known)
    if unknown:
        raise FsmtlError(f"head {head}: unknown option(s) {sorted(unknown)}; it takes {sorted(known)}")
    check_options(head, options)
    if ways is not None and (isinstance(ways, bool) or not isinstance(ways, numbers.Integral)):
        raise FsmtlError(f"adapt: ways must be an int, got {ways!r}")
    ways = None if ways is None else int(ways)
    b = as_task_batch(support_features, support_labels, query_features, ways)
    scores = fn(b.support, b.labels, b.query, b.ways, **options)
    if not bool(torch.isfinite(scores).all()):
        raise FsmtlError(f"adapt: head {head} gave non-finite scores: the features contain NaN or infinite values")
    return scores[0] if b.single else scores


def adapt(
    support_features: Tensor, support_labels: Tensor, query_features: Tensor, head: str = "logreg",
    ways: int | None = None, **options: Any,
) -> Tensor:
    """Fit ``head`` on each task's support set and predict its queries.

    Args:
        support_features: float [S, D] (one task) or [T, S, D] (a batch), any float dtype, any device.
        support_labels: integer [S] or [T, S], values 0..ways-1, every class present in every task.
        query_features: float [Q, D] or [T, Q, D].
        head: "logreg" (default; options C=3.0, tol, max_iter, normalize=True), "proto" (cosine),
            "proto_euclidean", "ridge" (lam=1.0), "svm" (C=0.1, iters=300).
        ways: classes per task; ``max(label) + 1`` when None.

    Returns:
        int64 [Q] or [T, Q]: predicted labels in 0..ways-1, on the features' device.

    Raises:
        FsmtlError: bad shapes or dtypes, labels outside 0..ways-1, a class with no support, an
            unknown head or option.
    """
    return adapt_scores(support_features, support_labels, query_features, head, ways, **options).argmax(-1)


__all__ = [
    "HEAD_NAMES", "LogregFit", "adapt", "adapt_scores", "class_centroids", "feature_heads", "fit_logreg",
    "fit_predict_logreg", "head_options", "logreg_logits", "proto_logits", "ridge_logits", "svm_logits",
]
