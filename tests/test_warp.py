"""Random affine and elastic warps after Lee19 (the Omniglot recipe's augmentation): the draws, the warp, the loader."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fsmtl.core.errors import FsmtlError
from fsmtl.pipelines.augment import ELASTIC_GRID, draw_affine, draw_elastic, elastic_grid_shift, warp_batch
from fsmtl.pipelines.backend_torch import cat_plans
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


def test_elastic_draws_are_seeded_normal_fields_of_the_given_size() -> None:
    a = draw_elastic(3000, torch.Generator().manual_seed(4), 1.5)
    b = draw_elastic(3000, torch.Generator().manual_seed(4), 1.5)
    assert a.shape == (3000, 2, ELASTIC_GRID, ELASTIC_GRID) and a.dtype == torch.float32 and torch.equal(a, b)
    assert 1.45 < float(a.std()) < 1.55 and abs(float(a.mean())) < 0.02
    assert not torch.any(draw_elastic(4, torch.Generator().manual_seed(4), 0.0))


def test_an_even_elastic_field_shifts_the_image_by_its_pixels() -> None:
    x = torch.rand(2, 1, 12, 16)
    identity = torch.eye(2, 3).expand(2, 2, 3)
    assert torch.allclose(warp_batch(x, identity, torch.zeros(2, 2, 4, 4)), x, atol=1e-6)
    field = torch.zeros(2, 2, 4, 4)
    field[:, 0] = 1.0  # every control point one pixel to the right: sample one pixel to the right
    field[1, 0], field[1, 1] = 0.0, -2.0  # the second image two pixels up
    shift = elastic_grid_shift(field, 12, 16)
    assert shift.shape == (2, 12, 16, 2)
    y = warp_batch(x, identity, field)
    assert torch.allclose(y[0, :, :, :-1], x[0, :, :, 1:], atol=1e-5)
    assert torch.allclose(y[1, :, 2:, :], x[1, :, :-2, :], atol=1e-5)
    # a field that varies between control points bends the image smoothly: no pixel moves further
    # than the largest control-point displacement (bicubic overshoot aside, a few percent)
    bend = draw_elastic(64, torch.Generator().manual_seed(5), 2.0)
    dense = elastic_grid_shift(bend, 32, 32) * 16.0  # normalised -> pixels at 32 px
    assert float(dense.abs().max()) <= 1.1 * float(bend.abs().max())


def test_the_loader_draws_elastic_fields_after_the_affine_ones(tiny_shards: Path) -> None:
    split = open_shards(tiny_shards).split("train")
    kw = dict(ways=3, shots=2, queries=1, tasks_per_batch=2, affine_degrees=20.0, prefetch=False)
    affine, elastic = PipelineConfig(**kw), PipelineConfig(**kw, elastic_px=1.5)
    offsets = torch.from_numpy(split.class_offsets)
    pa = plan_batch(offsets, affine, 4, torch.Generator().manual_seed(0))
    pe = plan_batch(offsets, elastic, 4, torch.Generator().manual_seed(0))
    assert torch.equal(pa.rows, pe.rows) and torch.equal(pa.warp, pe.warp) and pa.elastic is None
    assert pe.elastic.shape == (18, 2, ELASTIC_GRID, ELASTIC_GRID)
    # elastic alone rides on identity affine warps
    alone = plan_batch(offsets, PipelineConfig(ways=3, shots=2, queries=1, tasks_per_batch=2, elastic_px=1.0),
                       4, torch.Generator().manual_seed(0))
    assert torch.equal(alone.warp, torch.eye(2, 3).expand(18, 2, 3)) and alone.elastic.shape[0] == 18
    both = cat_plans([pe, pe])
    assert torch.equal(both.elastic, torch.cat([pe.elastic, pe.elastic])) and both.warp.shape[0] == 36
    with build_task_loader(split, [0.5] * 3, [0.25] * 3, elastic) as a, build_task_loader(split, [0.5] * 3, [0.25] * 3, elastic) as b:
        xa, xb = next(a).images, next(b).images
    with build_task_loader(split, [0.5] * 3, [0.25] * 3, affine) as c:
        xc = next(c).images
    assert torch.equal(xa, xb) and not torch.allclose(xa, xc)
    with pytest.raises(FsmtlError, match="only the torch back end draws them, not 'reference'"):
        PipelineConfig(backend="reference", elastic_px=1.0)
    with pytest.raises(FsmtlError, match=r"elastic_px: expected a number in \[0, 8\)"):
        PipelineConfig(elastic_px=-1.0)
