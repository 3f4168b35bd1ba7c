"""Export one split to an FFCV ``.beton`` (``fsmtl convert --format ffcv``): ``<split>/data.beton``.

Two fields per sample: ``image`` (an ``NDArrayField``, raw uint8 [H, W, C], no JPEG: lossless and
no decode cost at these sizes) and ``label`` (an ``IntField``, the split-level class id).
Sample ``i`` of the file is row ``i`` of the split, so the row indices our episode sampler draws
address the .beton directly.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from types import ModuleType

import numpy as np

from fsmtl.core.errors import FsmtlError
from fsmtl.core.optional import import_optional, keep_thread_counts
from fsmtl.preprocess.shards import SplitData

FIELDS = ("image", "label")
# FFCV's default 8 MB pages make even a tiny split's file >= 16 MB; 2 MB pages still hold ~100
# 84x84x3 samples each
_PAGE_SIZE = 1 << 21


def import_ffcv() -> ModuleType:
    """Import ffcv without its side effect on the process's thread counts.

    ``ffcv.pipeline.compiler`` calls ``numba.set_num_threads(1)`` and ``torch.set_num_threads(1)``
    at import, which would silently serialise every numba kernel and torch CPU op that runs
    afterwards (our augmentation included). The counts are restored after the import.

    Raises:
        FsmtlError: if FFCV is not installed.
    """
    try:
        return import_optional("ffcv")  # thread counts restored after its import
    except ImportError as e:
        raise FsmtlError(f"--format ffcv: ffcv is not installed ({e}); pip install 'fsmtl[ffcv]'") from None


class _Rows:
    """The split as the indexed dataset FFCV's writer expects: ``ds[i] -> (image, label)``."""

    def __init__(self, split: SplitData) -> None:
        self.images, self.labels = split.images, split.labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return np.ascontiguousarray(self.images[i]), int(self.labels[i])


def export_split_ffcv(split: SplitData, path: Path, workers: int = 1, progress: bool = True) -> None:
    """Write ``split`` to the FFCV file ``path``.

    Args:
        split: images uint8 [N, H, W, C], labels int64 [N].
        path: the .beton to write (its directory must exist).
        workers: FFCV writer processes (1 keeps it deterministic and light).
        progress: FFCV's own progress bar (it has no switch: off means its stderr is swallowed).

    Raises:
        FsmtlError: if FFCV is not installed.
    """
    import_ffcv()
    from ffcv.fields import IntField, NDArrayField
    from ffcv.writer import DatasetWriter

    shape = tuple(int(v) for v in split.images.shape[1:])
    with keep_thread_counts():
        writer = DatasetWriter(
            str(path),
            {"image": NDArrayField(dtype=np.dtype("uint8"), shape=shape), "label": IntField()},
            num_workers=workers,
            page_size=_PAGE_SIZE,
        )
        quiet = contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
        with quiet:
            writer.from_indexed_dataset(_Rows(split), chunksize=256)


# Importing this module imports FFCV (thread counts preserved), so where FFCV is missing the
# import fails: ``fsmtl convert --format ffcv`` loads its exporters before doing any work.
try:
    import_ffcv()
except FsmtlError as _e:
    raise ImportError(str(_e)) from None
