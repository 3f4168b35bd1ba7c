"""Export one split for the DALI back end (``fsmtl convert --format dali``): ``<split>/dali/``.

``images.npy`` (uint8 [N, H, W, C]) and ``labels.npy`` (int64 [N]), plain .npy arrays that DALI's
``fn.readers.numpy`` can read and that the DALI back end memory-maps and feeds, batch by batch
in the order our episode sampler chose, through ``fn.external_source`` (DALI's readers walk
files in sequence or shuffled; they cannot take per-batch index lists, which task sampling
needs). Where the split is itself a memory-mapped file on the same file system, ``images.npy``
is a hard link to it (no second copy on disk); otherwise it is written.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fsmtl.preprocess.shards import SplitData

FILES = ("images.npy", "labels.npy")


def export_split_dali(split: SplitData, out_dir: Path) -> list[Path]:
    """Write ``split`` for DALI into ``out_dir``; return the files written.

    Args:
        split: images uint8 [N, H, W, C], labels int64 [N].
        out_dir: the split's ``dali`` directory (created if missing).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images_path, labels_path = out_dir / FILES[0], out_dir / FILES[1]
    source = getattr(split.images, "filename", None)
    linked = False
    if source is not None and Path(source).is_file():
        try:
            os.link(source, images_path)
            linked = True
        except OSError:  # another file system, or links unsupported
            linked = False
    if not linked:
        out = np.lib.format.open_memmap(
            images_path, mode="w+", dtype=np.uint8, shape=split.images.shape
        )
        for i in range(0, len(split.images), 4096):
            out[i : i + 4096] = split.images[i : i + 4096]
        out.flush()
        del out
    np.save(labels_path, np.asarray(split.labels, dtype=np.int64), allow_pickle=False)
    return [images_path, labels_path]
