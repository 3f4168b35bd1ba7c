"""Writing shards atomically: a temporary folder beside ``out``, meta.json with every file's hash,
then one rename."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from fsmtl.core.errors import FsmtlError
from fsmtl.core.fileio import atomic_write_json, sha256_file
from fsmtl.preprocess.shard_integrity import META_HASH
from fsmtl.preprocess.shard_temporaries import check_replaceable, remove_stale_temporaries, temporary_name
from fsmtl.preprocess.shards import FORMAT_NAME, FORMAT_VERSION, SPLITS


_STATS_CHUNK = 4096  # images per chunk when computing mean/std


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on the 0..1 scale, in float64, in chunks (constant memory).

    Args:
        images: uint8 [N, H, W, C].
    """
    c = images.shape[-1]
    total = np.zeros(c, dtype=np.float64)
    total_sq = np.zeros(c, dtype=np.float64)
    count = 0
    for i in range(0, len(images), _STATS_CHUNK):
        chunk = np.asarray(images[i : i + _STATS_CHUNK], dtype=np.float64).reshape(-1, c) / 255.0
        total += chunk.sum(0)
        total_sq += np.square(chunk).sum(0)
        count += chunk.shape[0]
    if count == 0:
        return [0.0] * c, [1.0] * c
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean.tolist(), np.where(std > 0, std, 1.0).tolist()


@dataclass
class _SplitRecord:
    n_images: int
    n_classes: int
    class_offsets: list[int]
    bytes: int


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NO_FALLOCATE = (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 1 << 62  # unknown: let the writes decide


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


@dataclass
class ShardWriter:
    """Writes a shard set into a temporary directory beside ``out``; ``commit`` renames it.

    Use as a context manager: leaving the block with an exception removes the temporary
    directory, so a failed conversion leaves nothing behind::

        with ShardWriter(out, "cifar-fs", sources=[src]) as w:
            w.write_split("train", images, labels, classes)
            w.commit()
    """

    out: Path
    benchmark: str
    sources: Sequence[str | os.PathLike[str]] = ()
    force: bool = False
    extra_meta: dict[str, Any] = field(default_factory=dict)
    normalization: tuple[Sequence[float], Sequence[float]] | None = None  # fixed (mean, std), else the data's
    _tmp: Path | None = field(default=None, init=False)
    _splits: dict[str, _SplitRecord] = field(default_factory=dict, init=False)
    _shape: tuple[int, int, int] | None = field(default=None, init=False)
    _extra_files: list[str] = field(default_factory=list, init=False)
    _stats: tuple[list[float], list[float]] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        given = Path(self.out)
        self.out = given.resolve()  # "." has itself as parent: the temporary must be a true sibling
        check_replaceable(self.out, self.force)
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.out)
            self._tmp = self.out.parent / temporary_name(self.out)
            self._tmp.mkdir()
        except OSError as e:  # name the path the user gave, not the hidden temporary beside it
            self._tmp = None
            raise FsmtlError(f"{given}: cannot write the output there ({e.strerror or e}); choose another --out") from None

    @property
    def tmp_dir(self) -> Path:
        """The temporary directory being written (for extra formats such as FFCV or DALI)."""
        assert self._tmp is not None, "writer already committed or aborted"
        return self._tmp

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:  # one line naming --out, not the temporary
            free = _free_bytes(self.out.parent)
            raise FsmtlError(f"{self.out}: the disk filled up while writing ({exc.strerror}; {_gb(free)} free now); "
                             "nothing was written, choose another --out or free space") from None  # fmt: skip

    def alloc_images(self, split: str, n: int, shape: tuple[int, int, int]) -> np.ndarray:
        """A writable uint8 [n, H, W, C] memmap at ``<split>/images.npy`` to fill in place.

        For converters that decode more images than fit comfortably in RAM. Fill it in label
        order (sorted), then call :meth:`finish_split`.
        """
        self._check_split_shape(split, shape)
        d = self.tmp_dir / split
        d.mkdir(exist_ok=True)
        need = int(n) * int(np.prod(shape))
        if need > _free_bytes(d):  # sizes are known up front: refuse before writing anything
            raise self._no_space(split, need, _free_bytes(d))
        arr = np.lib.format.open_memmap(d / "images.npy", mode="w+", dtype=np.uint8, shape=(n, *shape))
        self._reserve(d / "images.npy", split, need)
        return arr

    def _no_space(self, split: str, need: int, free: int) -> FsmtlError:
        return FsmtlError(f"{self.out}: not enough free space for the {split} images ({_gb(need)} needed, "
                          f"{_gb(free)} free on that file system); nothing was written")  # fmt: skip

    def _reserve(self, path: Path, split: str, need: int) -> None:
        """Allocate the memmap's blocks now: a file system that fills up later would kill the
        process with SIGBUS at the first write into an unbacked page (no message, temporaries left)."""
        with open(path, "r+b") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            except OSError as e:
                if e.errno in _DISK_FULL:
                    raise self._no_space(split, need, _free_bytes(path.parent)) from None
                if e.errno not in _NO_FALLOCATE:
                    raise
                # a file system without fallocate: the free-space check above is all there is


    def write_split(
        self,
        split: str,
        images: np.ndarray,
        labels: np.ndarray,
        classes: Sequence[str],
        categories: Sequence[str] | None = None,
    ) -> None:
        """Write one split; rows are reordered (stably) so labels are sorted.

        Args:
            images: uint8 [N, H, W, C].
            labels: integer [N], values 0..len(classes)-1, every class present.
            classes: original identifier per label.
            categories: optional high-level category per class.
        """
        if images.dtype != np.uint8 or images.ndim != 4:
            raise FsmtlError(f"{split}: expected uint8 [N,H,W,C] images, got {images.dtype} {images.shape}")
        order = np.argsort(np.asarray(labels), kind="stable")
        sorted_labels = np.asarray(labels)[order]
        out = self.alloc_images(split, len(images), tuple(images.shape[1:]))  # type: ignore[arg-type]
        if np.array_equal(order, np.arange(len(order))):
            out[:] = images
        else:
            for i in range(0, len(order), _STATS_CHUNK):
                out[i : i + _STATS_CHUNK] = images[order[i : i + _STATS_CHUNK]]
        out.flush()
        del out
        self.finish_split(split, sorted_labels, classes, categories)

    def finish_split(
        self,
        split: str,
        labels: np.ndarray,
        classes: Sequence[str],
        categories: Sequence[str] | None = None,
    ) -> None:
        """Write labels and classes for a split whose images.npy is already in place (sorted)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        labels = np.asarray(labels, dtype=np.int64)
        d = self.tmp_dir / split
        images = np.load(d / "images.npy", mmap_mode="r")
        n_classes = len(classes)
        if labels.shape != (len(images),):
            raise FsmtlError(f"{split}: {len(images)} images but {labels.shape[0]} labels")
        if len(labels) and (np.any(np.diff(labels) < 0) or labels[0] < 0 or labels[-1] >= n_classes):
            raise FsmtlError(f"{split}: labels must be sorted and in [0, {n_classes})")
        counts = np.bincount(labels, minlength=n_classes)
        if n_classes == 0 or np.any(counts == 0):
            missing = [classes[i] for i in np.flatnonzero(counts == 0)][:5]
            raise FsmtlError(f"{split}: classes without images: {missing}")
        if categories is not None and len(categories) != n_classes:
            raise FsmtlError(f"{split}: {n_classes} classes but {len(categories)} categories")
        np.save(d / "labels.npy", labels, allow_pickle=False)
        doc: dict[str, Any] = {"classes": [str(c) for c in classes]}
        if categories is not None:
            doc["categories"] = [str(c) for c in categories]
        (d / "classes.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._splits[split] = _SplitRecord(
            n_images=int(len(images)),
            n_classes=n_classes,
            class_offsets=offsets.tolist(),
            bytes=int(os.path.getsize(d / "images.npy")),
        )
        if split == "train" or self._stats is None:
            self._stats = channel_stats(images)

    def add_file(self, relpath: str) -> Path:
        """Register an extra file (e.g. ``train/data.beton``) to be hashed into meta.json.

        Returns the absolute path inside the temporary directory to write it to.
        """
        self._extra_files.append(relpath)
        p = self.tmp_dir / relpath
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def split_summary(self) -> dict[str, dict[str, int]]:
        """{split: {"n_images", "n_classes", "bytes"}} of what has been written so far."""
        return {s: {"n_images": r.n_images, "n_classes": r.n_classes, "bytes": r.bytes} for s, r in self._splits.items()}

    def commit(self) -> Path:
        """Hash every file, write meta.json, and move the directory into place.

        Returns:
            The final output directory.
        """
        if not self._splits:
            raise FsmtlError(f"{self.out}: nothing to write (no split had data)")
        assert self._shape is not None and self._stats is not None
        mean, std, kind = self._stats[0], self._stats[1], "data"
        if self.normalization is not None:
            mean, std, kind = [float(v) for v in self.normalization[0]], [float(v) for v in self.normalization[1]], "seed"
            if not (len(mean) == len(std) == self._shape[2]) or min(std) <= 0:
                raise FsmtlError(f"{self.out}: normalisation constants for {len(mean)} channels (std > 0) "
                                 f"expected for {self._shape[2]}-channel images")  # fmt: skip
        files: dict[str, str] = {}
        rels = [f"{s}/{name}" for s in self._splits for name in ("images.npy", "labels.npy", "classes.json")]
        for rel in rels + self._extra_files:
            files[rel] = sha256_file(self.tmp_dir / rel)
        sources = []
        for s in self.sources:
            p = Path(s)
            size = p.stat().st_size if p.is_file() else sum(
                f.stat().st_size for f in p.rglob("*") if f.is_file()
            )
            sources.append({"name": p.name, "bytes": int(size)})
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "benchmark": self.benchmark,
            "image_shape": list(self._shape),
            "mean": mean,
            "std": std,
            "normalization": kind,
            "data_mean": self._stats[0],
            "data_std": self._stats[1],
            "splits": {
                s: {
                    "n_images": r.n_images,
                    "n_classes": r.n_classes,
                    "class_offsets": r.class_offsets,
                }
                for s, r in sorted(self._splits.items(), key=lambda kv: SPLITS.index(kv[0]))
            },
            "sources": sources,
            "files": files,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **self.extra_meta,
        }
        atomic_write_json(self.tmp_dir / "meta.json", meta)
        digest = hashlib.sha256((self.tmp_dir / "meta.json").read_bytes()).hexdigest()
        (self.tmp_dir / META_HASH).write_text(digest + "\n")  # meta.json's own integrity, checked at open
        if self.out.exists():
            check_replaceable(self.out, self.force)  # again: it may have changed while we converted
            shutil.rmtree(self.out)
        os.replace(self.tmp_dir, self.out)
        self._tmp = None
        return self.out

    def _check_split_shape(self, split: str, shape: Iterable[int]) -> None:
        shape = tuple(int(x) for x in shape)
        if len(shape) != 3 or shape[2] not in (1, 3):
            raise FsmtlError(f"{split}: expected image shape (H, W, C) with C in (1, 3), got {shape}")
        if self._shape is None:
            self._shape = shape  # type: ignore[assignment]
        elif self._shape != shape:
            raise FsmtlError(f"{split}: image shape {shape} differs from earlier splits' {self._shape}")
