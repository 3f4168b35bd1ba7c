"""The canonical shard format: writing it atomically, loading it with checks, verifying hashes.

Layout of one converted benchmark::

    <out>/meta.json               format, version, benchmark, image shape, train mean/std,
                                  per-split counts and class offsets, sources, sha256 of every file
    <out>/<split>/images.npy      uint8 [N, H, W, C], C in {1, 3}
    <out>/<split>/labels.npy      int64 [N], sorted ascending, values 0..n_classes-1
    <out>/<split>/classes.json    {"classes": [original id per label], "categories": [...] | absent}

Labels are sorted, so class ``c`` of a split owns the contiguous rows
``class_offsets[c]:class_offsets[c+1]`` (stored in meta.json): no scan is needed to find a class.
Mean and std are per channel, on the 0..1 scale: the constants the writer is given (the seed's
for its four benchmarks), else computed from the train split (or, when there is no train split,
from the first split written). ``normalization`` says which; ``data_mean``/``data_std`` always hold
the computed statistics.
"""


from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fsmtl.core.errors import FsmtlError


FORMAT_NAME = "fsmtl-shards"
FORMAT_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class SplitData:
    """One split of a shard set, images memory-mapped.

    Attributes:
        name: "train", "val" or "test".
        images: uint8 [N, H, W, C] (a read-only memmap unless loaded with ``mmap=False``).
        labels: int64 [N], sorted, values in [0, n_classes).
        class_offsets: int64 [n_classes + 1]; class c owns rows offsets[c]:offsets[c+1].
        classes: original class identifiers, one per label.
        categories: high-level category per class (tiered-ImageNet, FC100), or None.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_offsets: np.ndarray
    classes: list[str]
    categories: list[str] | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def class_counts(self) -> np.ndarray:
        """int64 [n_classes]: images per class."""
        return np.diff(self.class_offsets)

    def class_rows(self, c: int) -> slice:
        """Rows of class ``c`` as a slice into ``images``/``labels``."""
        return slice(int(self.class_offsets[c]), int(self.class_offsets[c + 1]))


def check_meta(path: Path, meta: Any) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise FsmtlError(f"{path}: expected a JSON object")
    if meta.get("format") != FORMAT_NAME:
        raise FsmtlError(f"{path}: expected format {FORMAT_NAME!r}, got {meta.get('format')!r}")
    if meta.get("version") != FORMAT_VERSION:
        raise FsmtlError(
            f"{path}: expected format version {FORMAT_VERSION}, got {meta.get('version')!r}"
        )
    for key in ("benchmark", "image_shape", "mean", "std", "splits", "files"):
        if key not in meta:
            raise FsmtlError(f"{path}: missing key {key!r}")
    shape = meta["image_shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and shape[2] in (1, 3)):
        raise FsmtlError(f"{path}: expected image_shape [H, W, C] with C in (1, 3), got {shape!r}")
    if len(meta["mean"]) != shape[2] or len(meta["std"]) != shape[2]:
        raise FsmtlError(f"{path}: mean/std must have {shape[2]} channels")
    if not meta["splits"]:
        raise FsmtlError(f"{path}: no splits listed")
    return meta


