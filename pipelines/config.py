"""The pipelines stage's configuration: :class:`PipelineConfig`, its checks, and the check of a
whole request (split, normalisation, config) before any back end is built."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from fsmtl.core.errors import FsmtlError
from fsmtl.core.optional import import_optional
from fsmtl.pipelines.augment import WARP_LIMITS, default_padding
from fsmtl.core.checks import check_int, describe, is_real
from fsmtl.pipelines.checks import check_mean_std, check_out_dtype
from fsmtl.preprocess.shards import SplitData

BACKENDS = ("torch", "dali", "ffcv", "reference")
_BACKEND_MODULES = {"dali": "nvidia.dali", "ffcv": "ffcv"}
# the settings that decide the stream of batches (with backend and seed): a saved loader state
# resumes only a loader that has the same ones
_STREAM_FIELDS = ("ways", "shots", "queries", "tasks_per_batch", "augment", "padding", "jitter", "flip", "within_group",
                  "affine_degrees", "affine_scale", "affine_shear", "elastic_px")


@dataclass(frozen=True)
class PipelineConfig:
    """How training batches are made (the pipelines stage's only source of defaults)."""

    backend: str = "torch"
    ways: int = 5
    shots: int = 5
    queries: int = 5
    tasks_per_batch: int = 6
    within_group: bool = False  # every task's classes from one group of the split (SplitData.categories)
    augment: str = "lee"  # "lee" | "none"
    padding: int | None = None  # None -> 8 at >= 64 px, 4 below
    jitter: bool = True  # colour jitter (Omniglot turns it off)
    flip: bool = True
    # random affine warps after Lee19 (torch back end): rotation +-degrees, scale 1 +- scale, shear +-degrees
    affine_degrees: float = 0.0
    affine_scale: float = 0.0
    affine_shear: float = 0.0
    # then smooth elastic displacements (augment.draw_elastic): normal, this many pixels' standard
    # deviation at each of 4 x 4 control points (0: off)
    elastic_px: float = 0.0
    out_dtype: torch.dtype = torch.float32
    channels_last: bool = True
    seed: int = 0
    workers: int | None = None  # reference/ffcv/dali CPU workers; None -> os.cpu_count()
    device: str | torch.device = "cpu"  # a torch.device as resolved by the caller, or its name
    memory_budget_gb: float | None = None  # split larger than this stays in pinned host memory
    prefetch: bool = True
    # the torch back end's device path (CUDA): "auto" = the fused Triton kernel where it imports
    # and passes a self-check against the torch ops, else the torch ops; "triton"; "torch"
    device_kernel: str = "auto"
    group_images: int = 2048  # device path: whole batches planned and augmented per launch, ~this many images
    progress: bool = True  # progress bars of start-up work (an FFCV export of a split without one)

    def __post_init__(self) -> None:
        check_config(self)

    @property
    def warps(self) -> bool:
        """Whether batches get random affine warps (or elastic ones, which ride on an affine warp)."""
        return bool(self.affine_degrees or self.affine_scale or self.affine_shear or self.elastic_px)

    @property
    def per_class(self) -> int:
        return self.shots + self.queries

    @property
    def batch_images(self) -> int:
        return self.tasks_per_batch * self.ways * self.per_class


def check_config(cfg: PipelineConfig) -> None:
    """The settings on their own: types and ranges (those that depend on the split are checked
    by :func:`check_request`). Run by ``PipelineConfig.__init__`` (and ``dataclasses.replace``).

    Raises:
        FsmtlError: naming the setting, what was expected and what was found.
    """
    for name, options in (("backend", BACKENDS), ("augment", ("lee", "none")), ("device_kernel", ("auto", "triton", "torch"))):
        v = getattr(cfg, name)
        if not isinstance(v, str) or v not in options:
            raise FsmtlError(f"pipeline {name}: expected one of {', '.join(map(repr, options))}, got {v!r}")
    for name, lo in (("ways", 1), ("shots", 1), ("queries", 0), ("tasks_per_batch", 1), ("group_images", 1)):
        check_int(getattr(cfg, name), f"pipeline {name}", lo)
    for name in ("padding", "workers"):  # None: the default
        if getattr(cfg, name) is not None:
            check_int(getattr(cfg, name), f"pipeline {name} (or None)", 0)
    check_int(cfg.seed, "pipeline seed", -(2**63), 2**64 - 1)  # torch.Generator.manual_seed's range
    for name in ("jitter", "flip", "channels_last", "prefetch", "progress", "within_group"):
        if not isinstance(getattr(cfg, name), (bool, np.bool_)):
            raise FsmtlError(f"pipeline {name}: expected True or False, got {describe(getattr(cfg, name))}")
    check_out_dtype(cfg.out_dtype, "pipeline out_dtype")
    for name, hi in WARP_LIMITS:
        v = getattr(cfg, name)
        if not is_real(v) or not math.isfinite(v) or not 0.0 <= v < hi:
            raise FsmtlError(f"pipeline {name}: expected a number in [0, {hi:g}), got {describe(v)}")
    if cfg.warps and cfg.backend != "torch":
        raise FsmtlError(f"pipeline affine and elastic warps: only the torch back end draws them, not {cfg.backend!r}")
    gb = cfg.memory_budget_gb
    if gb is not None and (not is_real(gb) or not math.isfinite(gb) or gb < 0):
        raise FsmtlError(f"pipeline memory_budget_gb: expected None or a number >= 0, got {describe(gb)}")
    parse_device(cfg.device)


def parse_device(device: object) -> torch.device:
    """``cfg.device`` as a ``torch.device`` of type cpu or cuda (availability: :func:`check_request`)."""
    d = None
    if isinstance(device, (str, torch.device)):
        try:
            d = torch.device(device)
        except (RuntimeError, ValueError):
            pass
    if d is None or d.type not in ("cpu", "cuda"):
        raise FsmtlError(f"pipeline device: expected 'cpu', 'cuda' or 'cuda:N', got {describe(device)}")
    return d



def stream_config(cfg: PipelineConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in _STREAM_FIELDS}


def check_request(split: SplitData, mean: Sequence[float], std: Sequence[float], cfg: PipelineConfig) -> int:
    """Reject impossible requests before any work starts; return the crop padding.

    Raises:
        FsmtlError: naming the setting and what was expected.
    """
    if not isinstance(cfg, PipelineConfig):
        raise FsmtlError(f"pipeline config: expected a PipelineConfig, got {describe(cfg)}")
    check_config(cfg)  # (already run by PipelineConfig's __init__; cheap)
    images = split.images
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
        raise FsmtlError(f"split {split.name!r}: expected uint8 [N,H,W,C] images, got {images.dtype} {images.shape}")
    if images.shape[1] != images.shape[2]:
        raise FsmtlError(f"split {split.name!r}: expected square images, got {images.shape[1]}x{images.shape[2]}")
    offsets = np.asarray(split.class_offsets)
    if offsets.ndim != 1 or offsets[0] != 0 or offsets[-1] != len(images) or np.any(np.diff(offsets) < 1):
        raise FsmtlError(f"split {split.name!r}: class_offsets do not cover its {len(images)} images")
    check_mean_std(mean, std, images.shape[3], "pipeline")
    n_classes = len(offsets) - 1
    if cfg.ways > n_classes:
        raise FsmtlError(f"pipeline ways: split {split.name!r} has {n_classes} classes, cannot make {cfg.ways}-way tasks")
    if cfg.within_group:
        from fsmtl.pipelines.episodes import class_groups

        try:
            class_groups(split.categories, f"split {split.name!r}").eligible(cfg.ways)
        except ValueError as e:
            raise FsmtlError(f"pipeline within_group: split {split.name!r}: {e}") from None
    smallest = int(np.diff(offsets).min())
    if cfg.per_class > smallest:
        raise FsmtlError(
            f"pipeline shots+queries: {cfg.shots}+{cfg.queries} = {cfg.per_class} images per class, "
            f"but the smallest class of split {split.name!r} has {smallest}"
        )
    pad = default_padding(images.shape[1]) if cfg.padding is None else cfg.padding
    if not 0 <= pad < images.shape[1]:
        raise FsmtlError(f"pipeline padding: expected 0 <= padding < {images.shape[1]}, got {pad}")
    device = parse_device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FsmtlError(f"pipeline device: {cfg.device!r} requested but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise FsmtlError(f"pipeline device: {cfg.device!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    module = _BACKEND_MODULES.get(cfg.backend)
    if module is not None:
        try:
            import_optional(module)
        except ImportError as e:
            raise FsmtlError(f"pipeline backend {cfg.backend!r}: {module} is not installed ({e}); pip install 'fsmtl[{cfg.backend}]'") from None
    return pad
