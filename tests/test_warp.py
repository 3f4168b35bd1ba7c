"""Random affine warps after Lee19 (the Omniglot recipe's augmentation): the matrices, the warp, the loader."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fsmtl.core.errors import FsmtlError
from fsmtl.pipelines.augment import draw_affine, warp_batch
from fsmtl.pipelines.config import PipelineConfig
from fsmtl.pipelines.loader import build_task_loader
from fsmtl.pipelines.planning import plan_batch
from fsmtl.preprocess.shard_reader import open_shards


def test_no_warp_is_the_identity_and_the_ranges_hold() -> None:
    theta = draw_affine(5, torch.Generator().manual_seed(0), 0.0, 0.0, 0.0)
    assert torch.equal(theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(5, 2, 3))
    x = torch.randn(5, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    y = warp_batch(x, theta)
    assert torch.allclose(y, x, atol=1e-6) and y.is_contiguous(memory_format=torch.channels_last)
    # scale only: the matrix's determinant is 1 / magnification^2, magnifications within 1 +- 0.2
    th = draw_affine(2000, torch.Generator().manual_seed(1), 0.0, 0.2, 0.0)
    mag = th[:, :2, :2].det().rsqrt()
    assert 0.8 <= float(mag.min()) < 0.82 and 1.18 < float(mag.max()) <= 1.2
    # rotation only: orthonormal matrices with angles within +-30 degrees
    th = draw_affine(2000, torch.Generator().manual_seed(2), 30.0, 0.0, 0.0)
    angle = torch.atan2(th[:, 1, 0], th[:, 0, 0]).abs().max()
    assert math.degrees(float(angle)) <= 30.0 + 1e-4 and math.degrees(float(angle)) > 29.0
    assert torch.allclose(th[:, :2, :2].det(), torch.ones(2000), atol=1e-5)


def test_a_quarter_turn_is_a_rot90_and_the_border_extends() -> None:
    x = torch.rand(1, 1, 9, 9)
    quarter = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]])
    y = warp_batch(x, quarter)
    assert torch.allclose(y, torch.rot90(x, 1, (2, 3)), atol=1e-5) or torch.allclose(y, torch.rot90(x, 3, (2, 3)), atol=1e-5)
    flat = torch.full((1, 1, 8, 8), -0.5)  # a normalised background stays background under any warp
    assert torch.allclose(warp_batch(flat, draw_affine(1, torch.Generator().manual_seed(3), 40.0, 0.3, 20.0)), flat)


def test_the_loader_warps_seeded_batches_and_only_the_torch_back_end_does(tiny_shards: Path) -> None:
    split = open_shards(tiny_shards).split("train")
    cfg = PipelineConfig(ways=3, shots=2, queries=1, tasks_per_batch=2, affine_degrees=20.0, affine_scale=0.1, prefetch=False)
    with build_task_loader(split, [0.5] * 3, [0.25] * 3, cfg) as a, build_task_loader(split, [0.5] * 3, [0.25] * 3, cfg) as b:
        xa, xb = next(a).images, next(b).images
    assert torch.equal(xa, xb)
    plain = PipelineConfig(ways=3, shots=2, queries=1, tasks_per_batch=2, prefetch=False)
    with build_task_loader(split, [0.5] * 3, [0.25] * 3, plain) as c:
        xc = next(c).images
    assert not torch.allclose(xa, xc)  # warped
    # the warps are drawn after the Lee19 parameters: the same rows, crops and flips as without them
    offsets = torch.from_numpy(split.class_offsets)
    pw = plan_batch(offsets, cfg, 4, torch.Generator().manual_seed(0))
    pp = plan_batch(offsets, plain, 4, torch.Generator().manual_seed(0))
    assert torch.equal(pw.rows, pp.rows) and torch.equal(pw.params.top, pp.params.top) and pp.warp is None
    assert pw.warp.shape == (18, 2, 3)  # 2 tasks x 3 ways x 3 images
    with pytest.raises(FsmtlError, match="only the torch back end draws them, not 'reference'"):
        PipelineConfig(backend="reference", affine_degrees=10.0)
    with pytest.raises(FsmtlError, match=r"affine_scale: expected a number in \[0, 1\)"):
        PipelineConfig(affine_scale=1.5)
