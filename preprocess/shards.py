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

import glob
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from fsmtl.core.errors import FsmtlError
from fsmtl.core.fileio import atomic_write_json, read_json, sha256_file

FORMAT_NAME = "fsmtl-shards"
FORMAT_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")
_STATS_CHUNK = 4096  # images per chunk when computing mean/std


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

    def split(self, name: str, mmap: bool = True) -> SplitData:
        """Load and check one split (see :func:`load_split`)."""
        return load_split(self.root, name, mmap=mmap, meta=self.meta)


def _check_meta(path: Path, meta: Any) -> dict[str, Any]:
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


def open_shards(root: str | os.PathLike[str]) -> ShardSet:
    """Open a shard directory and check its meta.json (format, version, required keys).

    Raises:
        FsmtlError: naming the file and what was expected, if anything is off.
    """
    root = Path(root)
    if not root.is_dir():
        raise FsmtlError(f"{root}: not a directory (expected a shard directory with meta.json)")
    meta_path = root / "meta.json"
    meta = _check_meta(meta_path, read_json(meta_path, "shard meta.json"))
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
    root: str | os.PathLike[str], split: str, mmap: bool = True, meta: dict[str, Any] | None = None
) -> SplitData:
    """Load one split, checking shapes, dtypes and counts against meta.json.

    Args:
        root: the shard directory.
        split: "train", "val" or "test".
        mmap: memory-map images (default) instead of reading them into RAM.
        meta: an already-checked meta dict (skips re-reading meta.json).

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


def verify_shards(root: str | os.PathLike[str]) -> list[str]:
    """Re-hash every file listed in meta.json.

    Returns:
        One line per problem (``"<path>: sha256 differs"``, ``"<path>: missing"``, or a split whose
        arrays no longer match what meta.json says of them); empty if all is well.
    """
    shards = open_shards(root)
    problems = []
    for rel, digest in shards.meta["files"].items():
        p = shards.root / rel
        if not p.is_file():
            problems.append(f"{p}: missing")
        elif sha256_file(p) != digest:
            problems.append(f"{p}: sha256 differs from meta.json (file changed or corrupt)")
    if not problems:  # meta.json cannot hash itself: check that it still describes the arrays
        for name in shards.splits:
            try:
                load_split(shards.root, name, meta=shards.meta)
            except FsmtlError as e:
                problems.append(str(e))
    return problems


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


def check_replaceable(out: Path, force: bool) -> None:
    """Refuse to overwrite ``out`` unless ``force`` and it is an empty folder or a shard directory.

    ``--force`` replaces earlier output of fsmtl, never a folder of anything else (source images,
    a home directory given by mistake).
    """
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise FsmtlError(f"{out}: already exists (pass --force to replace a shard directory)")
    if not out.is_dir() or out.is_symlink():
        raise FsmtlError(f"{out}: not a directory; --force replaces only a shard directory")
    cwd = Path.cwd().resolve()
    if out.resolve() == cwd or out.resolve() in cwd.parents:
        raise FsmtlError(f"{out}: is the current directory or holds it; --force will not replace it (cd elsewhere)")
    if any(out.iterdir()):
        try:
            meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise FsmtlError(f"{out}: holds files that are not fsmtl shards (no fsmtl meta.json); --force replaces "
                             "only a shard directory: remove it yourself or choose another --out")  # fmt: skip
        ours = {"meta.json", *meta.get("files", {})}
        ours |= {str(Path(f).parents[i].as_posix()) for f in ours for i in range(len(Path(f).parents) - 1)}
        for p in sorted(out.rglob("*")):
            rel = p.relative_to(out).as_posix()
            if rel not in ours:
                raise FsmtlError(f"{p}: not written by fsmtl convert; --force replaces a shard directory only "
                                 "as fsmtl wrote it: move that file away first")  # fmt: skip


def temporary_name(out: Path) -> str:
    """``.<out>.tmp-<host>-<pid>-<ns>``: the host and pid tell a later run whether its writer lives."""
    return f".{out.name}.tmp-{_host()}-{os.getpid()}-{time.time_ns()}"


def _host() -> str:
    return "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40] or "host"


def remove_stale_temporaries(out: Path) -> None:
    """Delete the temporary folders of conversions into ``out`` that were killed on this host.

    Only folders named for this host are judged (another machine's pids mean nothing here, e.g.
    on a shared file system), and only on POSIX, where ``kill(pid, 0)`` asks whether a pid lives.
    """
    if os.name != "posix":
        return
    prefix = f".{out.name}.tmp-{_host()}-"
    for tmp in out.parent.glob(f"{glob.escape(prefix)}*"):
        try:
            pid = int(tmp.name[len(prefix):].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


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

    def alloc_images(self, split: str, n: int, shape: tuple[int, int, int]) -> np.ndarray:
        """A writable uint8 [n, H, W, C] memmap at ``<split>/images.npy`` to fill in place.

        For converters that decode more images than fit comfortably in RAM. Fill it in label
        order (sorted), then call :meth:`finish_split`.
        """
        self._check_split_shape(split, shape)
        d = self.tmp_dir / split
        d.mkdir(exist_ok=True)
        return np.lib.format.open_memmap(d / "images.npy", mode="w+", dtype=np.uint8, shape=(n, *shape))

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
