"""Opening converted shards: meta.json checked (:mod:`fsmtl.preprocess.shards` holds the format),
each split's arrays memory-mapped and checked."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fsmtl.core.errors import FsmtlError
from fsmtl.core.fileio import read_json
from fsmtl.preprocess.shard_integrity import check_files, check_meta_hash, split_files
from fsmtl.preprocess.shards import SPLITS, SplitData, check_meta



@dataclass(frozen=True)
class ShardSet:
    """A converted benchmark: its meta.json and access to its splits."""

    root: Path
    meta: dict[str, Any]

    @property
    def benchmark(self) -> str:
        return str(self.meta["benchmark"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        h, w, c = self.meta["image_shape"]
        return int(h), int(w), int(c)

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean of the train split, 0..1 scale."""
        return tuple(float(v) for v in self.meta["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel std of the train split, 0..1 scale."""
        return tuple(float(v) for v in self.meta["std"])

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if s in self.meta["splits"]]

    def split(self, name: str, mmap: bool = True, verify: bool = False) -> SplitData:
        """Load and check one split (see :func:`load_split`)."""
        return load_split(self.root, name, mmap=mmap, meta=self.meta, verify=verify)


def open_shards(root: str | os.PathLike[str]) -> ShardSet:
    """Open a shard directory and check its meta.json (format, version, required keys).

    Raises:
        FsmtlError: naming the file and what was expected, if anything is off.
    """
    root = Path(root)
    if not root.is_dir():
        raise FsmtlError(f"{root}: not a directory (expected a shard directory with meta.json)")
    meta_path = root / "meta.json"
    meta = check_meta(meta_path, read_json(meta_path, "shard meta.json"))
    check_meta_hash(root)
    return ShardSet(root=root, meta=meta)


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise FsmtlError(f"{path}: not a .npy file (no NumPy header; the file is corrupt or was replaced)")
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise FsmtlError(f"{path}: file not found") from None
    except (ValueError, OSError, EOFError) as e:
        raise FsmtlError(f"{path}: not a readable .npy array: {e}") from None


def load_split(
    root: str | os.PathLike[str], split: str, mmap: bool = True, meta: dict[str, Any] | None = None,
    verify: bool = False,
) -> SplitData:
    """Load one split, checking shapes, dtypes and counts against meta.json.

    Args:
        root: the shard directory.
        split: "train", "val" or "test".
        mmap: memory-map images (default) instead of reading them into RAM.
        meta: an already-checked meta dict (skips re-reading meta.json).
        verify: first compare the split's files with meta.json's sha256 (cached by size and
            mtime: see :mod:`fsmtl.preprocess.shard_integrity`); training and eval do.

    Returns:
        The split, with ``images`` uint8 [N, H, W, C] and ``labels`` int64 [N].
    """
    root = Path(root)
    if meta is None:
        meta = open_shards(root).meta
    if split not in meta["splits"]:
        raise FsmtlError(
            f"{root / 'meta.json'}: no split {split!r} (available: {', '.join(meta['splits'])})"
        )
    info = meta["splits"][split]
    d = root / split
    if verify:
        check_files(root, meta, split_files(meta, split))
    images = _load_npy(d / "images.npy", mmap)
    labels = np.asarray(_load_npy(d / "labels.npy", mmap=False))
    h, w, c = meta["image_shape"]
    n = int(info["n_images"])
    if images.dtype != np.uint8 or images.shape != (n, h, w, c):
        raise FsmtlError(
            f"{d / 'images.npy'}: expected uint8 {(n, h, w, c)}, got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.int64 or labels.shape != (n,):
        raise FsmtlError(f"{d / 'labels.npy'}: expected int64 ({n},), got {labels.dtype} {labels.shape}")
    offsets = np.asarray(info["class_offsets"], dtype=np.int64)
    n_classes = int(info["n_classes"])
    if offsets.shape != (n_classes + 1,) or offsets[0] != 0 or offsets[-1] != n:
        raise FsmtlError(f"{root / 'meta.json'}: class_offsets of {split!r} do not cover {n} images")
    expected = np.repeat(np.arange(n_classes, dtype=np.int64), np.diff(offsets))
    if not np.array_equal(labels, expected):
        raise FsmtlError(
            f"{d / 'labels.npy'}: labels are not grouped as meta.json's class_offsets say"
        )
    cls = read_json(d / "classes.json", "classes.json")
    classes = cls.get("classes") if isinstance(cls, dict) else None
    if not isinstance(classes, list) or len(classes) != n_classes:
        raise FsmtlError(f"{d / 'classes.json'}: expected {n_classes} class identifiers")
    categories = cls.get("categories")
    if categories is not None and len(categories) != n_classes:
        raise FsmtlError(f"{d / 'classes.json'}: expected {n_classes} categories")
    return SplitData(split, images, labels, offsets, [str(x) for x in classes], categories)


