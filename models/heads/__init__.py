"""Adaptation heads: from support features and labels to predicted query labels, many tasks at once.

``adapt(support, labels, query, head="logreg", **options)`` is the one entry point; every head is
also importable on its own (``fit_logreg``, ``proto_logits``, ``ridge_logits``, ``svm_logits``).
The ``finetune`` head needs the network, not features, so it lives in ``eval.heads.finetune``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import Tensor

from fsmtl.models.heads.checks import HeadTasks, as_head_tasks, check_finite, l2_normalize
from fsmtl.models.heads.logreg import LogregFit, fit_logreg, fit_predict_logreg, logreg_logits
from fsmtl.models.heads.proto import class_centroids, proto_logits
from fsmtl.models.heads.ridge import ridge_logits
from fsmtl.models.heads.svm import svm_logits
from fsmtl.core.checks import is_int, is_real
from fsmtl.core.errors import FsmtlError


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
_FLAGS = ("normalize",)  # options that must be a bool


def check_options(head: str, options: dict[str, Any]) -> None:
    """Raise FsmtlError for an option ``head`` does not take, or one out of range (C <= 0,
    lam <= 0, iters < 1, normalize not a bool, ...)."""
    known = head_options(head)
    unknown = set(options) - set(known)
    if unknown:
        raise FsmtlError(f"head {head}: unknown option(s) {sorted(unknown)}; it takes {sorted(known)}")
    for name, value in options.items():
        if name in _POSITIVE and not (is_real(value) and 0 < value < float("inf")):
            raise FsmtlError(f"head {head}: {name} must be a finite number > 0, got {value!r}")
        if name in _COUNTS and not (is_int(value) and value >= 1):
            raise FsmtlError(f"head {head}: {name} must be an integer >= 1, got {value!r}")
        if name in _FLAGS and not isinstance(value, bool):
            raise FsmtlError(f"head {head}: {name} must be True or False, got {value!r}")


def _lookup(head: str) -> Callable[..., Tensor]:
    heads = feature_heads()
    if not isinstance(head, str) or head not in heads:
        extra = " ('finetune' needs the network: use eval.heads.finetune)" if head == "finetune" else ""
        raise FsmtlError(f"head: expected one of {', '.join(heads)}, got {head!r}{extra}")
    return heads[head]


def _checked(
    support_features: Tensor, support_labels: Tensor, query_features: Tensor, head: str, ways: int | None,
    options: dict[str, Any], what: str,
) -> tuple[Callable[..., Tensor], HeadTasks]:
    """The head's scores function and the checked batch; raises FsmtlError for any bad input."""
    fn = _lookup(head)
    check_options(head, options)
    if ways is not None and not is_int(ways):
        raise FsmtlError(f"{what}: ways must be an int, got {ways!r}")
    ways = None if ways is None else int(ways)
    return fn, as_head_tasks(support_features, support_labels, query_features, ways, what)


def _scores(fn: Callable[..., Tensor], b: HeadTasks, head: str, options: dict[str, Any], what: str) -> Tensor:
    scores = fn(b.support, b.labels, b.query, b.ways, **options)
    if not bool(torch.isfinite(scores).all()):  # the support is finite (checked): the queries, or overflow
        check_finite(what, query=b.query)
        raise FsmtlError(
            f"{what}: head {head} gave non-finite scores from finite features: values too large for "
            f"{b.support.dtype} (normalize=True, the default, avoids this)"
        )
    return scores


def adapt_scores(
    support_features: Tensor, support_labels: Tensor, query_features: Tensor, head: str = "logreg",
    ways: int | None = None, **options: Any,
) -> Tensor:
    """Like :func:`adapt`, but returns the head's scores float [T?, Q, ways] instead of labels.

    An empty batch (T = 0) gives empty scores [0, Q, ways] and needs ``ways`` (there are no labels
    to infer it from).
    """
    fn, b = _checked(support_features, support_labels, query_features, head, ways, options, "adapt_scores")
    if b.ways is None:
        raise FsmtlError(
            "adapt_scores: an empty batch of tasks (T = 0) needs ways= to shape its scores [0, Q, ways]"
        )
    scores = _scores(fn, b, head, options, "adapt_scores")
    return scores[0] if b.single else scores


def adapt(
    support_features: Tensor, support_labels: Tensor, query_features: Tensor, head: str = "logreg",
    ways: int | None = None, **options: Any,
) -> Tensor:
    """Fit ``head`` on each task's support set and predict its queries.

    Args:
        support_features: float [S, D] (one task) or [T, S, D] (a batch), any float dtype, any
            device, finite.
        support_labels: integer [S] or [T, S], values 0..ways-1, every class present in every task.
        query_features: float [Q, D] or [T, Q, D], finite; Q may be 0.
        head: "logreg" (default; options C=3.0, tol, max_iter, normalize=True), "proto" (cosine),
            "proto_euclidean", "ridge" (lam=1.0), "svm" (C=0.1, iters=300); every head takes
            ``normalize`` (a bool, True by default: L2-normalise the features first).
        ways: classes per task (an int >= 2); ``max(label) + 1`` when None.

    Returns:
        int64 [Q] or [T, Q]: predicted labels in 0..ways-1, on the features' device. An empty
        batch (T = 0) gives an empty int64 [0, Q] after the same checks (no head is fitted).

    Raises:
        FsmtlError: bad shapes or dtypes, NaN or infinite features, labels outside 0..ways-1, a
            class with no support, an unknown head or option, an option out of range.
    """
    fn, b = _checked(support_features, support_labels, query_features, head, ways, options, "adapt")
    if b.support.shape[0] == 0:
        return torch.zeros(b.query.shape[:2], dtype=torch.int64, device=b.query.device)
    pred = _scores(fn, b, head, options, "adapt").argmax(-1)
    return pred[0] if b.single else pred


__all__ = [
    "HEAD_NAMES", "LogregFit", "adapt", "adapt_scores", "check_options", "class_centroids", "feature_heads", "fit_logreg",
    "fit_predict_logreg", "head_options", "logreg_logits", "proto_logits", "ridge_logits", "svm_logits",
]
