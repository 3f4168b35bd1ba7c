"""The pipelines stage's data types: a batch's plan, the batch itself, and what a back end provides."""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple, Protocol

import torch
from torch import Tensor

from fsmtl.pipelines.augment import LeeParams


class TaskBatch(NamedTuple):
    """One multi-task training batch, all tensors on the configured device.

    B = T * ways * (shots + queries), ordered task-major, then way, then image.

    Attributes:
        images: float [B, C, H, W], normalised (channels_last strides by default).
        task: int64 [B] in [0, T).
        label: int64 [B] in [0, ways): the class's position within its task.
        global_class: int64 [B]: the split-level class id (the MTL head row).
    """

    images: Tensor
    task: Tensor
    label: Tensor
    global_class: Tensor


class BatchPlan(NamedTuple):
    """A batch decided but not yet made: CPU tensors drawn from the generator."""

    rows: Tensor  # int64 [B] rows of the split
    task: Tensor  # int64 [B]
    label: Tensor  # int64 [B]
    global_class: Tensor  # int64 [B]
    params: LeeParams | None  # None when cfg.augment == "none"
    warp: Tensor | None = None  # float32 [B, 2, 3] affine warps (augment.draw_affine), or None
    elastic: Tensor | None = None  # float32 [B, 2, g, g] elastic displacements (augment.draw_elastic), or None


class Backend(Protocol):
    """What each back end provides to :class:`TaskLoader`."""

    def stream(self, generator: torch.Generator) -> Iterator[tuple[TaskBatch, Tensor, Any]]:
        """Yield (batch, generator state after planning it, CUDA event or None) forever."""
        ...

    def close(self) -> None: ...


