"""Turning a TrainConfig into ready parts: device, precision, data, model, optimizer, loader.

Every check that can fail on user input runs here, before the first step.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fsmtl.core.errors import FsmtlError
from fsmtl.models import build_model, feature_dim, model_kwarg_names
from fsmtl.preprocess.class_copies import recorded_class_copies, split_with_class_copies
from fsmtl.preprocess.shard_reader import open_shards
from fsmtl.preprocess.shards import SplitData
from fsmtl.train.config import TrainConfig


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Data:
    """The splits a run trains and validates on, with what checkpoints record about them."""

    train: SplitData
    val: SplitData | None  # the validation split (cfg.validation_split()), or None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meta: dict[str, Any]  # -> checkpoint["data_meta"]

    @property
    def channels(self) -> int:
        return int(self.meta["image_shape"][2])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_shape"][0])


def _check_val(val: SplitData, cfg: TrainConfig, name: str) -> None:
    per = cfg.test_shots + cfg.test_queries
    smallest = int(np.diff(val.class_offsets).min())
    if cfg.test_ways > val.n_classes:
        raise FsmtlError(f"--test-ways {cfg.test_ways}: the {name} split (validation) has only {val.n_classes} classes")
    if per > smallest:
        raise FsmtlError(
            f"--test-shots + --test-queries = {per}, but the smallest {name} class (validation) has {smallest} images"
        )
    if cfg.val_within_group:
        _check_groups(val, cfg.test_ways, f"--val-within-group --test-ways {cfg.test_ways}", name)


def _check_groups(split: SplitData, ways: int, flags: str, name: str) -> None:
    """Refuse grouped tasks the split cannot make (no groups recorded, or no group of ``ways`` classes)."""
    from fsmtl.pipelines.episodes import class_groups

    try:
        class_groups(split.categories, f"the {name} split").eligible(ways)
    except ValueError as e:
        raise FsmtlError(f"{flags}: {e}") from None


def load_data(cfg: TrainConfig) -> Data:
    """Open ``cfg.data`` and check it can make the requested tasks (FsmtlError otherwise)."""
    if not cfg.data:
        raise FsmtlError("--data: expected a shard directory (made by 'fsmtl convert'), got nothing")
    if not Path(cfg.data).is_dir():
        origin = f"the data directory stored in {cfg.resume}; pass --data DIR where it is now" if cfg.resume else "expected a shard directory made by 'fsmtl convert'"
        raise FsmtlError(f"--data {cfg.data}: not found ({origin})")
    shards = open_shards(cfg.data)
    if "train" not in shards.splits:
        raise FsmtlError(f"{cfg.data}/meta.json: no 'train' split to train on")
    h, w, c = shards.image_shape
    if h != w:
        raise FsmtlError(f"{cfg.data}/meta.json: expected square images, got {h}x{w}")
    train = shards.split("train", verify=cfg.verify_data)
    if cfg.trainval:
        if "val" not in shards.splits:
            raise FsmtlError(f"--trainval: {cfg.data} has no 'val' split to merge")
        from fsmtl.pipelines.loader import concat_splits

        # the val classes get the copies the converter gave train's (Omniglot's rotations as classes)
        stages = recorded_class_copies(shards.meta, "train", f"{cfg.data}/meta.json")
        train = concat_splits([train, split_with_class_copies(shards.split("val", verify=cfg.verify_data), stages)])
    name = cfg.validation_split()
    if name is not None and name not in shards.splits:
        if cfg.val_split == "auto" and name == "val":
            name = None  # no val split: train without validation (run.py says so)
        else:
            why = " (--trainval validates on the test split, as the seed did)" if cfg.val_split == "auto" else ""
            raise FsmtlError(f"--val-split {cfg.val_split}: {cfg.data} has no '{name}' split{why}; "
                             "pass --val-split none to train without validation")  # fmt: skip
    if cfg.train_within_group:
        _check_groups(train, cfg.train_ways, f"--train-within-group --train-ways {cfg.train_ways}", "train")
    val = shards.split(name, verify=cfg.verify_data) if name is not None else None
    if val is not None:
        _check_val(val, cfg, name)
    meta = {
        "benchmark": shards.benchmark, "image_shape": [h, w, c], "mean": list(shards.mean),
        "std": list(shards.std), "n_train_classes": train.n_classes,
        # what was trained on, by content: --resume refuses other images of the same shape
        "train_sha256": trained_on_digest(shards.meta, ["train", "val"] if cfg.trainval else ["train"]),
    }  # fmt: skip
    return Data(train, val, tuple(shards.mean), tuple(shards.std), meta)


def trained_on_digest(meta: dict[str, Any], splits: list[str]) -> str | None:
    """One sha256 over the sha256 meta.json lists for the files of ``splits`` (None: none listed)."""
    files = sorted((rel, d) for rel, d in meta.get("files", {}).items() if rel.split("/")[0] in splits)
    return hashlib.sha256(json.dumps(files).encode()).hexdigest() if files else None


def model_kwargs_for(cfg: TrainConfig) -> dict[str, Any]:
    """Options for ``build_model``: the drop rate, where the model has one, and conv4's width and
    pools when set."""
    names = model_kwarg_names(cfg.model)
    out: dict[str, Any] = {"drop_rate": cfg.drop_rate} if "drop_rate" in names else {}
    for name in ("width", "pools"):
        if getattr(cfg, name) is not None and name in names:
            out[name] = getattr(cfg, name)
    return out


def build_backbone(cfg: TrainConfig, data: Data, device: torch.device) -> tuple[torch.nn.Module, int]:
    """The backbone on ``device`` (channels_last if asked) and its feature width."""
    model = build_model(cfg.model, in_channels=data.channels, image_size=data.image_size, **model_kwargs_for(cfg))
    dim = feature_dim(model, data.channels, data.image_size)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, dim


def build_loader(cfg: TrainConfig, data: Data, device: torch.device, amp_dtype: torch.dtype | None,
                 rank: int, factory: Callable[..., Any] | None = None) -> Any:
    """The training TaskLoader (``pipelines.loader.build_task_loader`` unless ``factory`` is given);
    each distributed rank gets its own seed so that ranks sample different tasks."""
    from fsmtl.pipelines.config import PipelineConfig
    from fsmtl.pipelines.loader import build_task_loader
    pcfg = PipelineConfig(
        backend=cfg.pipeline, ways=cfg.train_ways, shots=cfg.train_shots, queries=cfg.train_queries,
        tasks_per_batch=cfg.meta_batch_size, within_group=cfg.train_within_group, augment=cfg.augment, jitter=cfg.jitter, flip=cfg.flip,
        affine_degrees=cfg.affine_degrees, affine_scale=cfg.affine_scale, affine_shear=cfg.affine_shear,
        elastic_px=cfg.elastic_px, out_dtype=amp_dtype or torch.float32, channels_last=cfg.channels_last,
        seed=cfg.seed + 1_000_003 * rank, workers=cfg.workers, device=device, progress=cfg.progress,
    )  # fmt: skip
    return (factory or build_task_loader)(data.train, data.mean, data.std, pcfg)
