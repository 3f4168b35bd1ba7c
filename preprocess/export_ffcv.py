"""Export one split to an FFCV ``.beton`` (``fsmtl convert --format ffcv``): ``<split>/data.beton``.

Two fields per sample: ``image`` (an ``NDArrayField``, raw uint8 [H, W, C], no JPEG: lossless and
no decode cost at these sizes) and ``label`` (an ``IntField``, the split-level class id).
Sample ``i`` of the file is row ``i`` of the split, so the row indices our episode sampler draws
address the .beton directly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fsmtl.errors import FsmtlError
from preprocess.shards import SplitData

FIELDS = ("image", "label")


class _Rows:
    """The split as the indexed dataset FFCV's writer expects: ``ds[i] -> (image, label)``."""

    def __init__(self, split: SplitData) -> None:
        self.images, self.labels = split.images, split.labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return np.ascontiguousarray(self.images[i]), int(self.labels[i])


def export_split_ffcv(split: SplitData, path: Path, workers: int = 1) -> None:
    """Write ``split`` to the FFCV file ``path``.

    Args:
        split: images uint8 [N, H, W, C], labels int64 [N].
        path: the .beton to write (its directory must exist).
        workers: FFCV writer processes (1 keeps it deterministic and light).

    Raises:
        FsmtlError: if FFCV is not installed.
    """
    try:
        from ffcv.fields import IntField, NDArrayField
        from ffcv.writer import DatasetWriter
    except Exception as e:  # noqa: BLE001 - ImportError or a broken native library
        raise FsmtlError(
            f"--format ffcv: ffcv is not installed ({e}); pip install 'fsmtl[ffcv]'"
        ) from None
    shape = tuple(int(v) for v in split.images.shape[1:])
    writer = DatasetWriter(
        str(path),
        {"image": NDArrayField(dtype=np.dtype("uint8"), shape=shape), "label": IntField()},
        num_workers=workers,
    )
    writer.from_indexed_dataset(_Rows(split), chunksize=256)
