"""New classes made of old ones under a symmetry of the square (Omniglot's rotations as classes).

A converter that adds such classes to a split records how in the shards' meta.json, under
``class_copies``: ``{split: [stage, ...]}``, each stage a list of copy names from :data:`COPIES`.
Applying a stage to n classes appends one block of n new classes per name, class k's copy under
the i-th name (0-based) becoming class (i + 1) * n + k, named ``<class>/<name>``; later stages copy
the earlier stages' classes too (mirror then quarter turns: the eight symmetries of the square).
``--trainval`` reads the record to give the val classes it merges the same copies as train's.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from fsmtl.core.errors import FsmtlError
from fsmtl.preprocess.shards import SplitData

# name -> transform of uint8 [N, H, W, C] images (axis 2 is x)
COPIES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mirror": lambda x: x[:, :, ::-1],  # left-right
    **{f"rot{r}": partial(np.rot90, k=r // 90, axes=(1, 2)) for r in (90, 180, 270)},
}
QUARTER_TURNS: tuple[str, ...] = ("rot90", "rot180", "rot270")
MIRROR: tuple[str, ...] = ("mirror",)


def with_class_copies(
    images: np.ndarray, labels: np.ndarray, classes: list[str], stage: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every class again under each copy of ``stage``, as new classes after the originals.

    Args:
        images: uint8 [N, H, W, C]; labels: int64 [N] into ``classes`` (n of them).
        stage: names from :data:`COPIES`.

    Returns:
        (uint8 [N * (1 + len(stage)), H, W, C], int64 labels, classes + the copies' names): the
        originals first, then one block per copy in ``stage``'s order, rows in the originals' order.
    """
    n = len(classes)
    images = np.concatenate([images] + [COPIES[name](images) for name in stage])
    labels = np.concatenate([labels + i * n for i in range(len(stage) + 1)])
    return images, labels, classes + [f"{c}/{name}" for name in stage for c in classes]


def split_with_class_copies(split: SplitData, stages: Sequence[Sequence[str]]) -> SplitData:
    """``split`` with the copies of every stage in turn, in memory (images are copied).

    Returns:
        A SplitData with n * prod(1 + len(stage)) classes, rows still grouped by class in label
        order (each copy block is the previous rows transformed), categories repeated per block;
        ``split`` itself when there are no stages.
    """
    if not stages:
        return split
    images, labels, classes = np.asarray(split.images), np.asarray(split.labels, dtype=np.int64), list(split.classes)
    categories = list(split.categories) if split.categories is not None else None
    for stage in stages:
        images, labels, classes = with_class_copies(images, labels, classes, stage)
        if categories is not None:
            categories = categories * (1 + len(stage))
    offsets = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=len(classes)))]).astype(np.int64)
    return SplitData(split.name, np.ascontiguousarray(images), labels, offsets, classes, categories)


def recorded_class_copies(meta: dict[str, Any], split: str, path: str | Path) -> list[list[str]]:
    """The stages of copies a converter added to ``split``, from a shard set's meta (``path`` names
    it in errors); [] when none were recorded (shards from before the record, or other benchmarks).

    Raises:
        FsmtlError: the record is not ``{split: [[name, ...], ...]}`` with names from :data:`COPIES`.
    """
    record = meta.get("class_copies", {})
    stages = record.get(split, []) if isinstance(record, dict) else None
    ok = isinstance(stages, list) and all(
        isinstance(s, list) and s and all(isinstance(n, str) and n in COPIES for n in s) for s in stages
    )
    if not ok:
        raise FsmtlError(f"{path}: class_copies: expected {{split: [[copy, ...], ...]}} with copies from "
                         f"{', '.join(COPIES)}, got {record!r}")  # fmt: skip
    return [list(s) for s in stages]
