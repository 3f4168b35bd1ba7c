"""The DALI back end: a DALI pipeline over the split's DALI export, fed by our task sampler.

What DALI does: crop with zero padding (``fn.slice``, ``out_of_bounds_policy="pad"``), the
colour-jitter blends (DALI arithmetic on per-sample scalars, with ``nvidia.dali.math.clamp``),
flip + normalise (``fn.crop_mirror_normalize``), on CPU operators (``device_id=None``) or GPU
operators when the loader's device is CUDA. What fsmtl does: plan each batch (rows and the Lee19
parameters, from the loader's generator) and hand DALI the uint8 images of those rows, gathered
from the memory-mapped export, plus the parameters, through ``fn.external_source``.

Why not DALI's own random ops: ``fn.jitter`` is GPU-only and is a pixel jitter, not
ColorJitter; ``fn.brightness_contrast`` contrasts around a fixed centre and ``fn.saturation``
works in HSV, neither torchvision's semantics; and a random per-image order of the three ops
is not expressible with fixed operators. Feeding our parameters makes DALI's output equal the
torch back end's for the same seed (tested), and keeps resume exact.
"""

from __future__ import annotations

import collections
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor

from fsmtl.core.device import cpu_workers
from fsmtl.pipelines.augment import CONTRAST, GRAY_WEIGHTS, SATURATION
from fsmtl.pipelines.formats import ExportCache, dali_images
from fsmtl.pipelines.config import PipelineConfig
from fsmtl.pipelines.planning import plan_batch, task_groups
from fsmtl.pipelines.types import BatchPlan, TaskBatch
from fsmtl.preprocess.shards import SplitData

_INPUTS = ("images", "flip", "anchor", "f", "con", "sat")


def plan_inputs(plan: BatchPlan, data: np.ndarray, channels: int) -> tuple[np.ndarray, ...]:
    """The external_source arrays of one batch: images and per-sample parameters.

    Returns:
        images uint8 [B, H, W, C]; flip int32 [B]; anchor int32 [B, 2] (crop corner, may be
        negative); and for the three jitter steps f, con, sat float32 [B, 3] (the step's factor,
        and 1.0 where its blend target is the gray mean or the gray image).
    """
    images = data[plan.rows.numpy()]
    b = len(images)
    p = plan.params
    if p is None:
        zero = np.zeros((b, 3), np.float32)
        return images, np.zeros(b, np.int32), np.zeros((b, 2), np.int32), np.ones((b, 3), np.float32), zero, zero
    anchor = (torch.stack([p.top, p.left], 1) - p.pad).numpy().astype(np.int32)
    if p.factors is None or p.order is None:
        f, con, sat = np.ones((b, 3), np.float32), np.zeros((b, 3), np.float32), np.zeros((b, 3), np.float32)
    else:
        f = p.factors.gather(1, p.order).numpy().astype(np.float32)
        con = (p.order == CONTRAST).numpy().astype(np.float32)
        sat = (p.order == SATURATION).numpy().astype(np.float32)
        if channels == 1:  # saturation of a gray image is the identity (torchvision)
            f = np.where(sat > 0, np.float32(1.0), f)
    return images, p.flip.numpy().astype(np.int32), anchor, f, con, sat


def n_inputs(cfg: PipelineConfig) -> int:
    """How many of ``_INPUTS`` the graph uses (DALI warns about unused ones)."""
    if cfg.augment != "lee":
        return 2
    return 6 if cfg.jitter else 3


def _dali_graph(cfg: PipelineConfig, size: int, channels: int, mean: list[float], std: list[float], src: Any, gpu: bool) -> Any:
    """Build the DALI pipeline's graph; ``src`` returns one batch's inputs per call."""
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types

    ins = fn.external_source(source=src, num_outputs=n_inputs(cfg), batch=True)
    images, flip = ins[0], ins[1]
    if gpu:
        images = images.gpu()
    x = fn.cast(images, dtype=types.FLOAT) * (1.0 / 255.0)
    if cfg.augment == "lee":
        x = fn.slice(x, ins[2], np.array([size, size], np.int32), axes=[0, 1], out_of_bounds_policy="pad", fill_values=0)
        if cfg.jitter:
            f, con, sat = (t.gpu() for t in ins[3:]) if gpu else ins[3:]
            for k in range(3):
                if channels == 3:
                    gray = GRAY_WEIGHTS[0] * x[:, :, 0:1] + GRAY_WEIGHTS[1] * x[:, :, 1:2] + GRAY_WEIGHTS[2] * x[:, :, 2:3]
                else:
                    gray = x
                target = sat[k] * gray + con[k] * fn.reductions.mean(gray)
                x = dmath.clamp(f[k] * x + (1.0 - f[k]) * target, 0.0, 1.0)
    return fn.crop_mirror_normalize(x, mirror=flip, mean=mean, std=std, output_layout="HWC", dtype=types.FLOAT)


class DaliBackend:
    """Runs one DALI pipeline; batches are planned in the main process (exact resume)."""

    prefetch_thread = False  # DALI prefetches itself (prefetch_queue_depth)

    def __init__(self, split: SplitData, mean: list[float], std: list[float], cfg: PipelineConfig, pad: int) -> None:
        self.cfg, self.mean, self.std, self.pad = cfg, mean, std, pad
        self.cache = ExportCache()
        self.data = dali_images(split, self.cache)
        self.offsets = torch.from_numpy(np.asarray(split.class_offsets, dtype=np.int64))
        self.groups = task_groups(split, cfg)
        self.device = torch.device(cfg.device)
        self.gpu = self.device.type == "cuda"

    def _pipeline(self, source: Any) -> Any:
        from nvidia.dali import pipeline_def

        n, size, _, c = self.data.shape

        @pipeline_def(
            batch_size=self.cfg.batch_images,
            num_threads=max(1, cpu_workers(self.cfg.workers)),  # --workers 0: no worker processes; DALI still needs one thread
            device_id=(self.device.index or 0) if self.gpu else None,
            prefetch_queue_depth=2 if self.cfg.prefetch else 1,
        )
        def graph():  # type: ignore[no-untyped-def]
            return _dali_graph(self.cfg, size, c, self.mean, self.std, source, self.gpu)

        pipe = graph()
        pipe.build()
        return pipe

    def stream(self, generator: torch.Generator) -> Iterator[tuple[TaskBatch, Tensor, Any]]:
        plans: collections.deque = collections.deque()
        channels = self.data.shape[3]
        used = n_inputs(self.cfg)

        def source() -> tuple[np.ndarray, ...]:
            # called by DALI when it schedules a batch (ahead of the consumer)
            plan = plan_batch(self.offsets, self.cfg, self.pad, generator, self.groups)
            plans.append((plan, generator.get_state()))
            return plan_inputs(plan, self.data, channels)[:used]

        pipe = self._pipeline(source)
        try:
            while True:
                (out,) = pipe.run()
                plan, state = plans.popleft()
                yield self._batch(out, plan), state, None
        finally:
            del pipe

    def _batch(self, out: Any, plan: BatchPlan) -> TaskBatch:
        if self.gpu:
            from nvidia.dali.plugin.pytorch import feed_ndarray

            x = torch.empty(out.as_tensor().shape(), dtype=torch.float32, device=self.device)
            feed_ndarray(out.as_tensor(), x, cuda_stream=torch.cuda.current_stream(self.device))
        else:
            x = torch.from_numpy(out.as_array())
        x = x.permute(0, 3, 1, 2)
        if not self.cfg.channels_last:
            x = x.contiguous()
        dev = self.device
        return TaskBatch(x.to(self.cfg.out_dtype), plan.task.to(dev), plan.label.to(dev), plan.global_class.to(dev))

    def close(self) -> None:
        self.cache.close()

