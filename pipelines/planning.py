"""Planning a batch: its episodes and augmentation parameters, drawn on one CPU generator."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from fsmtl.pipelines.augment import draw_affine, draw_elastic, draw_lee_params
from fsmtl.pipelines.episodes import ClassGroups, class_groups, sample_episode_indices
from fsmtl.pipelines.config import PipelineConfig
from fsmtl.preprocess.shards import SplitData
from fsmtl.pipelines.types import BatchPlan


@functools.lru_cache(maxsize=16)
def _task_and_label(t: int, n: int, k: int) -> tuple[Tensor, Tensor]:
    """int64 [t * n * k] each: the task of every image and its label within the task."""
    return torch.arange(t).repeat_interleave(n * k), torch.arange(n).repeat_interleave(k).repeat(t)


def task_groups(split: SplitData, cfg: PipelineConfig) -> ClassGroups | None:
    """The class groups a loader draws tasks within (``cfg.within_group``), else None."""
    return class_groups(split.categories, f"split {split.name!r}") if cfg.within_group else None


def plan_batch(
    class_offsets: Tensor, cfg: PipelineConfig, pad: int, generator: torch.Generator, groups: ClassGroups | None = None
) -> BatchPlan:
    """Draw one batch's episodes and augmentation parameters (CPU, vectorised).

    Args:
        class_offsets: int64 [n_classes + 1] (CPU).
        pad: crop padding.
        generator: the loader's CPU generator (advanced by this call).
        groups: each task's classes from one group (:func:`task_groups`); None: from the whole split.
    """
    t, n, k = cfg.tasks_per_batch, cfg.ways, cfg.per_class
    rows, classes = sample_episode_indices(class_offsets, t, n, k, generator, groups)
    task, label = (x.clone() for x in _task_and_label(t, n, k))  # the same every batch: built once
    global_class = classes.unsqueeze(2).expand(t, n, k).reshape(-1)
    params = None
    if cfg.augment == "lee":
        params = draw_lee_params(t * n * k, generator, pad, jitter=cfg.jitter, flip=cfg.flip)
    warp = elastic = None
    if cfg.warps:  # after the Lee19 draws: a run without warps draws exactly as before
        warp = draw_affine(t * n * k, generator, cfg.affine_degrees, cfg.affine_scale, cfg.affine_shear)
    if cfg.elastic_px:  # after the affine draws: a run without it draws exactly as before
        elastic = draw_elastic(t * n * k, generator, cfg.elastic_px)
    return BatchPlan(rows.reshape(-1), task, label, global_class, params, warp, elastic)


