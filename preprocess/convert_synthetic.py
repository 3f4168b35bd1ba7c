"""``fsmtl convert synthetic``: the procedurally generated set of :mod:`preprocess.synthetic`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from fsmtl.core.device import cpu_workers
from fsmtl.core.errors import FsmtlError
from fsmtl.preprocess.config import PreprocessConfig
from fsmtl.preprocess.imaging import cancelling_pool
from fsmtl.preprocess.shard_writer import ShardWriter
from fsmtl.preprocess.shards import SPLITS
from fsmtl.preprocess.synthetic import SyntheticConfig, class_names, generate_class


def synthetic_config(cfg: PreprocessConfig) -> SyntheticConfig:
    """The generator's settings from the stage config (size defaults to 84, as mini-ImageNet)."""
    try:
        return SyntheticConfig(
            image_size=cfg.out_size,
            channels=cfg.channels,
            classes=tuple(cfg.classes),  # type: ignore[arg-type]
            per_class=cfg.per_class,
            seed=cfg.seed,
            difficulty=cfg.difficulty,
        )
    except ValueError as e:
        raise FsmtlError(f"synthetic: {e}") from None


def convert_synthetic(cfg: PreprocessConfig, w: ShardWriter) -> list[Path]:
    """Generate every non-empty split straight into the writer; there are no source files."""
    scfg = synthetic_config(cfg)
    shape = (scfg.image_size, scfg.image_size, scfg.channels)
    for split in SPLITS:
        n_classes = scfg.classes[SPLITS.index(split)]
        if n_classes == 0:
            continue
        out = w.alloc_images(split, n_classes * scfg.per_class, shape)

        def fill(k: int) -> None:
            out[k * scfg.per_class : (k + 1) * scfg.per_class] = generate_class(scfg, split, k)

        # numpy releases the GIL in the heavy array ops, so classes render in parallel
        with cancelling_pool(cpu_workers(cfg.workers)) as pool:
            done = pool.map(fill, range(n_classes))
            for _ in tqdm(
                done,
                total=n_classes,
                desc=f"synthetic {split}",
                unit="class",
                disable=None if cfg.progress else True,  # None: bars on a terminal only
                leave=False,
            ):
                pass
        out.flush()
        del out
        labels = np.repeat(np.arange(n_classes, dtype=np.int64), scfg.per_class)
        w.finish_split(split, labels, class_names(scfg, split))
    return []
