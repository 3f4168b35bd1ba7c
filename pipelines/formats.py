"""Finding a split's exported FFCV/DALI files, or exporting them on the fly into a cache.

``fsmtl convert --format ffcv,dali`` writes ``<root>/<split>/data.beton`` and
``<root>/<split>/dali/{images,labels}.npy``. A loaded split knows its directory through its
memory-mapped ``images.npy``. When the files are missing (converted without those formats, or a
split built in memory such as ``concat_splits``), the back end exports them into a temporary
cache directory, logs one line saying so, and deletes the cache when the loader closes.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np

from fsmtl.core.errors import FsmtlError
from fsmtl.preprocess.shards import SplitData

log = logging.getLogger(__name__)


def split_dir(split: SplitData) -> Path | None:
    """``<root>/<split>`` if ``split.images`` is a memory-mapped ``images.npy``, else None."""
    filename = getattr(split.images, "filename", None)
    if filename is None or Path(filename).name != "images.npy":
        return None
    return Path(filename).parent


class ExportCache:
    """A temporary directory for on-the-fly exports, removed by :meth:`close`, or failing that
    when the cache is garbage-collected or at interpreter exit (a loader dropped without
    ``close()`` must not leave a copy of the split in the temporary folder)."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._remove: weakref.finalize | None = None

    def dir(self) -> Path:
        """The directory, created on first use."""
        if self.path is None:
            self.path = Path(tempfile.mkdtemp(prefix="fsmtl-export-"))
            # holds the path, not self: runs once, at close(), collection or exit, whichever is first
            self._remove = weakref.finalize(self, shutil.rmtree, str(self.path), ignore_errors=True)
        return self.path

    def close(self) -> None:
        """Remove the directory now (if one was made)."""
        if self._remove is not None:
            self._remove()
            self._remove = None
        self.path = None


def ffcv_file(split: SplitData, cache: ExportCache, progress: bool = True) -> Path:
    """The split's .beton: the converted one, or a fresh export into ``cache`` (with FFCV's
    progress bar unless ``progress`` is False)."""
    from fsmtl.preprocess.export_ffcv import import_ffcv

    import_ffcv()
    from ffcv.reader import Reader

    d = split_dir(split)
    path = d / "data.beton" if d is not None else None
    if path is None or not path.is_file():
        path = cache.dir() / f"{split.name}.beton"
        log.warning("ffcv: no converted %s/data.beton; exporting split %r to %s", split.name, split.name, path)
        from fsmtl.preprocess.export_ffcv import export_split_ffcv

        export_split_ffcv(split, path, progress=progress)
    reader = Reader(str(path))
    n = reader.num_samples
    if n != len(split.images):
        raise FsmtlError(f"{path}: expected {len(split.images)} samples (the split's images), got {n}; re-run fsmtl convert --format ffcv")
    field = reader.handlers.get("image")
    shape = tuple(int(v) for v in getattr(field, "shape", ()))
    if shape != tuple(split.images.shape[1:]) or getattr(field, "dtype", None) != np.uint8:
        raise FsmtlError(f"{path}: expected uint8 images {tuple(split.images.shape[1:])}, got "
                         f"{getattr(field, 'dtype', None)} {shape}; re-run fsmtl convert --format ffcv")  # fmt: skip
    return path


def dali_images(split: SplitData, cache: ExportCache) -> np.ndarray:
    """The split's DALI export, memory-mapped: uint8 [N, H, W, C]."""
    d = split_dir(split)
    path = d / "dali" / "images.npy" if d is not None else None
    if path is None or not path.is_file():
        out = cache.dir() / f"{split.name}-dali"
        log.warning("dali: no converted %s/dali/; exporting split %r to %s", split.name, split.name, out)
        from fsmtl.preprocess.export_dali import export_split_dali

        path = export_split_dali(split, out)[0]
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise FsmtlError(f"{path}: not a readable .npy array: {e}") from None
    if arr.dtype != np.uint8 or arr.shape != split.images.shape:
        raise FsmtlError(f"{path}: expected uint8 {split.images.shape}, got {arr.dtype} {arr.shape}; re-run fsmtl convert --format dali")
    return arr
