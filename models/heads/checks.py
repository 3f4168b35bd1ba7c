"""Input checks shared by every head: one task or a batch of tasks, finite features, labels
0..ways-1, all ways present.

A head given a task with a class that has no support examples, or labels outside 0..ways-1,
would still return numbers, and NaN features make each head fail its own way (NaN scores, or a
linear-algebra error deep in a solver); these checks turn both into one clear error.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fsmtl.core.errors import FsmtlError

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class HeadTasks(NamedTuple):
    """A checked batch of tasks; ``single`` says the caller passed one task without a task dimension."""

    support: Tensor  # float [T, S, D]
    labels: Tensor  # int64 [T, S] in [0, ways)
    query: Tensor  # float [T, Q, D]
    ways: int | None  # None only for an empty batch (T = 0) given no ways
    single: bool


def as_head_tasks(
    support: Tensor, labels: Tensor, query: Tensor, ways: int | None = None, what: str = "adapt"
) -> HeadTasks:
    """Validate one task ([S,D], [S], [Q,D]) or a batch ([T,S,D], [T,S], [T,Q,D]).

    Args:
        support: float [T?, S, D] support features, all finite.
        labels: int64 (or any integer dtype) [T?, S] in [0, ways).
        query: float [T?, Q, D] query features, same D, same device, all finite.
        ways: number of classes (>= 2); inferred as ``labels.max() + 1`` when None. An empty
            batch (T = 0) has no labels to infer it from: ``ways`` is then None when not given.
        what: the caller's name, which starts every error message.

    Returns:
        A HeadTasks with a leading task dimension; labels converted to int64.

    Raises:
        FsmtlError: wrong dtype, rank or shape; NaN or infinite features; labels out of range; a
            class with no support.
    """
    support, labels, query = _as_tensors(support, labels, query, what)
    single = support.ndim == 2
    if single:
        if labels.ndim != 1 or query.ndim != 2:
            raise FsmtlError(
                f"{what}: one task needs support [S,D], labels [S], query [Q,D]; got "
                f"{_shape(support)}, {_shape(labels)}, {_shape(query)}"
            )
        support, labels, query = support[None], labels[None], query[None]
    elif support.ndim != 3 or labels.ndim != 2 or query.ndim != 3:
        raise FsmtlError(
            f"{what}: a batch of tasks needs support [T,S,D], labels [T,S], query [T,Q,D]; got "
            f"{_shape(support)}, {_shape(labels)}, {_shape(query)}"
        )
    t, s, d = support.shape
    if labels.shape != (t, s):
        raise FsmtlError(f"{what}: labels must be [{t},{s}] for support {_shape(support)}, got {_shape(labels)}")
    if query.shape[0] != t or query.shape[2] != d:
        raise FsmtlError(f"{what}: query must be [{t},Q,{d}] for support {_shape(support)}, got {_shape(query)}")
    if s == 0 or d == 0:
        raise FsmtlError(f"{what}: empty support set {_shape(support)}")
    if support.device != labels.device or support.device != query.device:
        devices = f"{support.device}, {labels.device}, {query.device}"
        raise FsmtlError(f"{what}: support, labels and query must share a device, got {devices}")
    # the support here (a quarter of the data); the queries through the scores they give, which are
    # non-finite whenever a query is (adapt's _scores checks them), so the common case pays no extra pass
    check_finite(what, support=support)
    labels = labels.to(torch.int64)
    if t == 0:  # an empty batch: nothing to infer ways from, nothing to check the labels against
        if ways is not None and ways < 2:
            raise FsmtlError(f"{what}: a task needs at least 2 classes, got ways={ways}")
        return HeadTasks(support, labels, query, ways, single)  # type: ignore[arg-type]
    ways = _check_labels(labels, ways, what)
    return HeadTasks(support, labels, query, ways, single)


def check_finite(what: str, **features: Tensor) -> None:
    """Raise FsmtlError naming the first of ``features`` that holds NaN or an infinity.

    One min/max reduction per tensor and one host sync in all: no copy, no per-task loop (a NaN
    makes both NaN, an infinity makes one infinite), so it costs a small part of any head's fit.
    """
    names = [k for k, x in features.items() if x.numel()]
    if not names:
        return
    with torch.no_grad():
        extremes = torch.stack([v.double() for k in names for v in torch.aminmax(features[k].detach())])
        ok = torch.isfinite(extremes).view(len(names), 2).all(1).tolist()
    for name, good in zip(names, ok):
        if not good:
            raise FsmtlError(f"{what}: {name} features contain NaN or infinite values (expected finite numbers)")


def _as_tensors(support, labels, query, what: str = "adapt") -> tuple[Tensor, Tensor, Tensor]:
    out = []
    for name, x in (("support features", support), ("support labels", labels), ("query features", query)):
        if not isinstance(x, Tensor):
            try:
                x = torch.as_tensor(x)
            except (TypeError, ValueError, RuntimeError) as e:
                raise FsmtlError(f"{what}: {name} must be an array or tensor, got {type(x).__name__}") from e
        out.append(x)
    support, labels, query = out
    for name, x in (("support features", support), ("query features", query)):
        if x.dtype not in _FLOAT_DTYPES:
            raise FsmtlError(f"{what}: {name} must be floating point, got {x.dtype}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise FsmtlError(f"{what}: support labels must be integers, got {labels.dtype}")
    return support, labels, query


def _check_labels(labels: Tensor, ways: int | None, what: str = "adapt") -> int:
    lo, hi = int(labels.min()), int(labels.max())
    if ways is None:
        ways = hi + 1
    if ways < 2:
        raise FsmtlError(f"{what}: a task needs at least 2 classes, got ways={ways}")
    if lo < 0 or hi >= ways:
        raise FsmtlError(f"{what}: support labels must be in 0..{ways - 1}, got values in {lo}..{hi}")
    counts = torch.zeros(labels.shape[0], ways, dtype=torch.int64, device=labels.device)
    counts.scatter_add_(1, labels, torch.ones_like(labels))
    empty = (counts == 0).nonzero()
    if empty.numel():
        task, cls = int(empty[0, 0]), int(empty[0, 1])
        raise FsmtlError(
            f"{what}: task {task} has no support example of class {cls} "
            f"({empty.shape[0]} empty class(es) in all); every class 0..{ways - 1} needs support"
        )
    return ways


def _shape(x: Tensor) -> str:
    return "[" + ",".join(str(v) for v in x.shape) + "]"


def one_hot(labels: Tensor, ways: int, dtype: torch.dtype) -> Tensor:
    """int64 [T, S] -> dtype [T, S, ways]."""
    return torch.nn.functional.one_hot(labels, ways).to(dtype)


def l2_normalize(x: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm; an all-zero row stays zero (as sklearn.preprocessing.normalize)."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm))
