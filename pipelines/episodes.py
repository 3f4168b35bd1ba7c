"""Few-shot task sampling as vectorised index operations, and the one label-remapping function.

All sampling is done on the CPU with a seeded ``torch.Generator`` over small index tensors (a few
thousand int64 values per batch), then the indices move to the device where the images live. That
makes "the same seed gives the same episodes on CPU and GPU" true by construction, and costs
microseconds: the images themselves are gathered on the device.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numba
import numpy as np
import torch
from torch import Tensor

from fsmtl.core.checks import describe
from fsmtl.pipelines.checks import PipelineInputError


def _check_offsets(class_offsets: object) -> None:
    if not isinstance(class_offsets, Tensor):
        raise PipelineInputError(f"class_offsets: expected a torch int64 tensor [n_classes+1], got {describe(class_offsets)}")
    if class_offsets.ndim != 1 or class_offsets.dtype != torch.int64 or class_offsets.numel() < 2:
        raise PipelineInputError(
            f"class_offsets: expected a torch int64 tensor [n_classes+1], got {class_offsets.dtype} {tuple(class_offsets.shape)}"
        )


def _check(class_offsets: Tensor, ways: int, per_class: int) -> Tensor:
    _check_offsets(class_offsets)
    n_classes = class_offsets.numel() - 1
    if ways < 1 or ways > n_classes:
        raise PipelineInputError(f"ways: cannot sample {ways}-way tasks from a split with {n_classes} classes")
    counts = class_offsets[1:] - class_offsets[:-1]
    smallest = int(counts.min())
    if per_class < 1 or per_class > smallest:
        raise PipelineInputError(
            f"per_class: {per_class} images per class (shots + queries) requested, but the smallest class has {smallest}"
        )
    return counts


@numba.njit(nogil=True, cache=True)
def _select_rows(keys, lengths, k, out):  # type: ignore[no-untyped-def]
    """Row r's ``k`` smallest of ``keys[r, :lengths[r]]`` by (key, index), ascending, into ``out``.

    One pass a row keeping a sorted buffer of the best ``k``: a key enters only when strictly
    below the buffer's largest, and later indices never displace an equal key, so ties go to the
    lower index. For random keys almost every element costs one predictable comparison.
    """
    buf = np.empty(k, dtype=np.float32)
    for r in range(keys.shape[0]):
        for j in range(k):
            buf[j] = keys[r, j]
            out[r, j] = j
            i = j  # insertion sort of the first k, stable
            while i > 0 and buf[i - 1] > buf[i]:
                buf[i - 1], buf[i] = buf[i], buf[i - 1]
                out[r, i - 1], out[r, i] = out[r, i], out[r, i - 1]
                i -= 1
        for j in range(k, lengths[r]):
            v = keys[r, j]
            if v < buf[k - 1]:
                i = k - 1
                while i > 0 and buf[i - 1] > v:
                    buf[i] = buf[i - 1]
                    out[r, i] = out[r, i - 1]
                    i -= 1
                buf[i] = v
                out[r, i] = j


@numba.njit(nogil=True, cache=True)
def _episode_rows(class_keys, within_keys, offsets, ways, per_class, classes_out, rows_out):  # type: ignore[no-untyped-def]
    """Both selections of :func:`sample_episode_indices` in one call (the same results as
    :func:`sample_classes` then :func:`_sample_within_classes` on the same keys).

    ``class_keys`` float32 [T, n_classes] -> ``classes_out`` int64 [T, ways]; ``within_keys``
    float32 [T * ways, max_count] -> ``rows_out`` int64 [T * ways, per_class], split rows.
    """
    n_classes = class_keys.shape[1]
    full = np.empty(class_keys.shape[0], dtype=np.int64)
    full[:] = n_classes
    _select_rows(class_keys, full, ways, classes_out)
    t = classes_out.shape[0]
    lengths = np.empty(t * ways, dtype=np.int64)
    for i in range(t):
        for j in range(ways):
            c = classes_out[i, j]
            lengths[i * ways + j] = offsets[c + 1] - offsets[c]
    _select_rows(within_keys, lengths, per_class, rows_out)
    for i in range(t):
        for j in range(ways):
            base = offsets[classes_out[i, j]]
            for m in range(per_class):
                rows_out[i * ways + j, m] += base


def smallest_keys(keys: Tensor, k: int, lengths: Tensor | None = None) -> Tensor:
    """Column indices int64 [R, k] of each row's ``k`` smallest keys, ascending, ties to the lower
    index: what a stable argsort's first ``k`` columns give.

    Args:
        keys: float32 [R, n] (CPU for the fast path).
        k: 1 <= k <= n (and <= every length).
        lengths: optional int64 [R] in [k, n]: only ``keys[r, :lengths[r]]`` take part, as if the
            rest were larger than every key.

    Why: a sort per row cost 0.65 ms per 6-task batch at mini-ImageNet's 600 images a class, and
    ``topk`` on fresh random keys still 0.14 ms (branch mispredictions); one pass with a k-buffer
    (numba, for k <= 64 on the CPU) costs a few microseconds a row. An unstable sort would order
    tied keys as its implementation pleases, letting the fixed test tasks depend on the torch
    version; both paths here break ties the same way.

    Raises:
        PipelineInputError (a ValueError): ``k`` or ``lengths`` out of range.
    """
    if not isinstance(keys, Tensor) or keys.ndim != 2:
        raise PipelineInputError(f"smallest_keys keys: expected a 2-D torch tensor [R, n], got {describe(keys)}")
    r, n = keys.shape
    if not 1 <= k <= n:
        raise PipelineInputError(f"smallest_keys: expected 1 <= k <= {n} (the row length), got k={k}")
    if lengths is None:
        lengths = torch.full((r,), n, dtype=torch.int64)
    elif not isinstance(lengths, Tensor) or lengths.dtype != torch.int64 or tuple(lengths.shape) != (r,):
        raise PipelineInputError(f"smallest_keys lengths: expected a torch int64 tensor [{r}], got {describe(lengths)}")
    elif r:  # O(R): a row shorter than k would yield indices past its length
        lo, hi = (int(v) for v in torch.aminmax(lengths))
        if lo < k or hi > n:
            raise PipelineInputError(f"smallest_keys lengths: expected values in [k={k}, {n}] (k <= every length <= the row length), got min {lo}, max {hi}")
    return _smallest_keys(keys, k, lengths)


def _smallest_keys(keys: Tensor, k: int, lengths: Tensor) -> Tensor:
    """:func:`smallest_keys` without its checks (for callers that have checked ``k`` and ``lengths``)."""
    r, n = keys.shape
    if keys.device.type == "cpu" and keys.dtype == torch.float32 and k <= _BUFFER_MAX:
        out = torch.empty(r, k, dtype=torch.int64)
        _select_rows(keys.contiguous().numpy(), lengths.contiguous().numpy(), k, out.numpy())
        return out
    pos = torch.arange(n, device=keys.device)
    keys = keys.masked_fill(pos >= lengths.to(keys.device).unsqueeze(1), float("inf"))
    return smallest_keys_sorting(keys, k)


_BUFFER_MAX = 64  # past this the buffer's shifting costs more than a selection


def smallest_keys_sorting(keys: Tensor, k: int) -> Tensor:
    """:func:`smallest_keys` by ``topk`` (any device and dtype); the reference the fast path is
    tested against. Ties broken by adding ``index * 2^-40`` in float64, below float32 keys' 2^-24
    resolution for rows under 2^16 keys; wider rows fall back to a stable argsort.
    """
    n = keys.shape[1]
    if n >= 1 << 16 or keys.dtype == torch.float64:
        return keys.argsort(dim=1, stable=True)[:, :k]
    tie_break = torch.arange(n, dtype=torch.float64, device=keys.device) * 2.0**-40
    return (keys.double() + tie_break).topk(k, dim=1, largest=False, sorted=True).indices


def sample_classes(n_classes: int, n_tasks: int, ways: int, generator: torch.Generator) -> Tensor:
    """Draw ``ways`` distinct classes for each of ``n_tasks`` tasks.

    Returns:
        int64 [n_tasks, ways] in [0, n_classes), distinct within each row, in random order.
    """
    keys = torch.rand(n_tasks, n_classes, generator=generator)
    return smallest_keys(keys, ways)


def sample_within_classes(
    class_offsets: Tensor, classes: Tensor, per_class: int, generator: torch.Generator
) -> Tensor:
    """Draw ``per_class`` distinct images from each given class, without replacement.

    Uses random keys over the largest class size, of which each class uses the first as many as
    it has images, so every subset of a class is equally likely.

    Args:
        class_offsets: int64 [n_classes + 1] (CPU), class c owns rows offsets[c]:offsets[c+1].
        classes: int64 [...] in [0, n_classes), class ids (CPU).
        per_class: images per class, 1 <= per_class <= the size of every class in ``classes``.

    Returns:
        int64 [..., per_class]: row indices into the split.

    Raises:
        PipelineInputError (a ValueError): a class id out of range, or a class with fewer than
            ``per_class`` images (its rows would run into the next class's).
    """
    _check_offsets(class_offsets)
    counts = class_offsets[1:] - class_offsets[:-1]
    if not isinstance(classes, Tensor) or classes.dtype != torch.int64:
        raise PipelineInputError(f"sample_within_classes classes: expected a torch int64 tensor, got {describe(classes)}")
    flat = classes.reshape(-1)
    if flat.numel() == 0:
        return torch.empty((*classes.shape, per_class), dtype=torch.int64)
    lo, hi = (int(v) for v in torch.aminmax(flat))
    if lo < 0 or hi >= counts.numel():
        raise PipelineInputError(f"sample_within_classes classes: expected ids in [0, {counts.numel()}), got min {lo}, max {hi}")
    sizes = counts[flat]
    smallest = int(sizes.min())
    if not 1 <= per_class <= smallest:
        raise PipelineInputError(
            f"sample_within_classes per_class: expected 1 <= per_class <= {smallest} (the smallest requested class), got {per_class}"
        )
    return _sample_within_classes(class_offsets, counts, classes, per_class, generator)


def _sample_within_classes(
    class_offsets: Tensor, counts: Tensor, classes: Tensor, per_class: int, generator: torch.Generator
) -> Tensor:
    """:func:`sample_within_classes` unchecked: for :func:`sample_episode_indices`, whose classes
    come from :func:`sample_classes` and whose ``per_class`` is checked against every class."""
    flat = classes.reshape(-1)
    max_count = int(counts.max())
    keys = torch.rand(flat.numel(), max_count, generator=generator)
    within = _smallest_keys(keys, per_class, counts[flat])  # keys past a class's size take no part
    rows = class_offsets[flat].unsqueeze(1) + within
    return rows.reshape(*classes.shape, per_class)


def sample_episode_indices(
    class_offsets: Tensor, n_tasks: int, ways: int, per_class: int, generator: torch.Generator,
    groups: ClassGroups | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample ``n_tasks`` N-way tasks with ``per_class`` images per class.

    Args:
        class_offsets: int64 [n_classes + 1] (CPU).
        generator: a CPU ``torch.Generator``; the result depends only on its state.
        groups: when given, every task's classes come from one group (:func:`sample_grouped_classes`);
            None: from the whole split.

    Returns:
        (rows, classes): rows int64 [n_tasks, ways, per_class] indices into the split, and
        classes int64 [n_tasks, ways], the split-level class id of each way. Way ``j`` of task ``t``
        is class ``classes[t, j]``, so the within-task label of ``rows[t, j, :]`` is ``j``.
    """
    counts = _check(class_offsets, ways, per_class)  # per_class <= every class: no per-draw check
    n_classes = class_offsets.numel() - 1
    if groups is not None:
        if groups.members.numel() and int(groups.members.max()) >= n_classes:
            raise PipelineInputError(f"groups: name class ids up to {int(groups.members.max())}, the split has {n_classes} classes")
        classes = sample_grouped_classes(groups, n_tasks, ways, generator)
        return _sample_within_classes(class_offsets, counts, classes, per_class, generator), classes
    if max(ways, per_class) > _BUFFER_MAX:
        classes = sample_classes(n_classes, n_tasks, ways, generator)
        rows = _sample_within_classes(class_offsets, counts, classes, per_class, generator)
        return rows, classes
    # the same draws in the same order as the two calls above, then one numba call for both
    # selections (the per-batch planning cost is mostly these small calls' overhead)
    class_keys = torch.rand(n_tasks, n_classes, generator=generator)
    within_keys = torch.rand(n_tasks * ways, int(counts.max()), generator=generator)
    classes = torch.empty(n_tasks, ways, dtype=torch.int64)
    rows = torch.empty(n_tasks * ways, per_class, dtype=torch.int64)
    _episode_rows(class_keys.numpy(), within_keys.numpy(), class_offsets.contiguous().numpy(), ways, per_class,
                  classes.numpy(), rows.numpy())  # fmt: skip
    return rows.reshape(n_tasks, ways, per_class), classes


class ClassGroups(NamedTuple):
    """The classes of a split by group (Omniglot's alphabet, tiered-ImageNet's category, the first
    folder level of an imagefolder tree), for tasks whose classes all come from one group.

    Attributes:
        names: one name a group, sorted.
        members: int64 [G, M]: group g's class ids in its first ``sizes[g]`` columns, ascending, -1 after.
        sizes: int64 [G]: classes a group.
    """

    names: tuple[str, ...]
    members: Tensor
    sizes: Tensor

    def eligible(self, ways: int) -> Tensor:
        """int64 [G'] ids of the groups with at least ``ways`` classes, ascending.

        Raises:
            PipelineInputError: no group has ``ways`` classes (names the largest and its size).
        """
        ok = torch.nonzero(self.sizes >= ways).reshape(-1)
        if ok.numel() == 0:
            big = int(self.sizes.argmax())
            raise PipelineInputError(
                f"ways: cannot make {ways}-way tasks within one group: the largest group, {self.names[big]!r}, "
                f"has {int(self.sizes[big])} classes"
            )
        return ok

    def too_small(self, ways: int) -> list[str]:
        """'name (size)' of each group with fewer than ``ways`` classes (left out of grouped tasks)."""
        return [f"{n} ({int(s)})" for n, s in zip(self.names, self.sizes.tolist()) if s < ways]


def class_groups(categories: Sequence[str] | None, where: str = "split") -> ClassGroups:
    """:class:`ClassGroups` of a split's per-class group names (``SplitData.categories``).

    Raises:
        PipelineInputError: ``categories`` is None (the converter recorded no groups) or empty.
    """
    if categories is None or len(categories) == 0:
        raise PipelineInputError(
            f"{where}: has no class groups (classes.json lists no categories); tasks within one group need shards "
            "converted with groups: Omniglot's alphabets, tiered-ImageNet's categories, or imagefolder's --group-folders"
        )
    names = tuple(sorted(set(map(str, categories))))
    index = {n: g for g, n in enumerate(names)}
    of_class = torch.tensor([index[str(c)] for c in categories], dtype=torch.int64)
    sizes = torch.bincount(of_class, minlength=len(names))
    members = torch.full((len(names), int(sizes.max())), -1, dtype=torch.int64)
    order = torch.argsort(of_class, stable=True)  # classes by group, ascending within each
    starts = torch.cumsum(sizes, 0) - sizes
    col = torch.arange(order.numel()) - starts[of_class[order]]
    members[of_class[order], col] = order
    return ClassGroups(names, members, sizes)


def sample_grouped_classes(groups: ClassGroups, n_tasks: int, ways: int, generator: torch.Generator) -> Tensor:
    """Draw each task's group (uniformly among those with at least ``ways`` classes), then ``ways``
    distinct classes of that group.

    Returns:
        int64 [n_tasks, ways] class ids, every row's classes from one group, in random order.

    Raises:
        PipelineInputError: no group has ``ways`` classes.
    """
    ok = groups.eligible(ways)
    pick = ok[torch.randint(0, ok.numel(), (n_tasks,), generator=generator)]
    keys = torch.rand(n_tasks, groups.members.shape[1], generator=generator)
    within = _smallest_keys(keys, ways, groups.sizes[pick])  # columns past a group's size take no part
    return groups.members[pick].gather(1, within)


def remap_labels(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Map arbitrary class ids to 0..k-1 in order of first appearance.

    Args:
        labels: int64 [N].

    Returns:
        (local, class_ids): local int64 [N] in [0, k), class_ids int64 [k] with
        ``class_ids[local] == labels``.
    """
    uniq, inverse = torch.unique(labels, sorted=True, return_inverse=True)
    # order of first appearance, not sorted order: position of each unique value's first hit
    first = torch.full((uniq.numel(),), labels.numel(), dtype=torch.int64, device=labels.device)
    first.scatter_reduce_(0, inverse, torch.arange(labels.numel(), device=labels.device), reduce="amin")
    order = first.argsort()
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=labels.device)
    return rank[inverse], uniq[order]
