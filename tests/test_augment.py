"""Lee19 batched augmentation: equal to torchvision on the same parameters, right distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as F
from PIL import Image

from fsmtl.pipelines.augment import (
    LeeParams,
    apply_lee,
    augment_rows,
    color_jitter,
    crop_flip_gather,
    default_padding,
    draw_lee_params,
)
from fsmtl.pipelines.numba_aug import augment_rows_numba

IDENTITY = ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
JITTER_FNS = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)


def _images(n: int, size: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth-ish images with a spread of values so contrast/saturation matter
    base = torch.randint(0, 256, (n, 1, 1, channels), generator=g)
    noise = torch.randint(-60, 61, (n, size, size, channels), generator=g)
    return (base + noise).clamp(0, 255).to(torch.uint8)


def _torchvision_one(img: torch.Tensor, p: LeeParams, i: int) -> torch.Tensor:
    """The seed's op order with torchvision functional ops on a float image: [C, H, W]."""
    x = img.permute(2, 0, 1).float() / 255.0
    size = x.shape[-1]
    x = F.crop(F.pad(x, [p.pad]), int(p.top[i]), int(p.left[i]), size, size)
    if p.factors is not None:
        for k in p.order[i].tolist():
            x = JITTER_FNS[k](x, float(p.factors[i, k]))
    return F.hflip(x) if bool(p.flip[i]) else x


@pytest.mark.parametrize("size,channels", [(32, 3), (84, 3), (28, 1)])
def test_apply_lee_equals_torchvision_functional_on_the_same_parameters(size: int, channels: int) -> None:
    n = 48
    images = _images(n, size, channels)
    params = draw_lee_params(n, torch.Generator().manual_seed(1), default_padding(size))
    mean, std = [0.0] * channels, [1.0] * channels
    ours = apply_lee(images, params, mean, std)
    for i in range(n):
        ref = _torchvision_one(images[i], params, i)
        assert (ours[i] - ref).abs().max().item() <= 1.0 / 255.0


def test_apply_lee_is_close_to_the_seeds_pil_pipeline_on_the_same_parameters() -> None:
    # PIL rounds to uint8 after every op and uses integer luma; a few levels of difference at most
    n, size = 24, 32
    images = _images(n, size)
    params = draw_lee_params(n, torch.Generator().manual_seed(2), 4)
    ours = apply_lee(images, params, *IDENTITY)
    worst = 0.0
    for i in range(n):
        img = F.crop(F.pad(Image.fromarray(images[i].numpy()), [4]), int(params.top[i]), int(params.left[i]), size, size)
        for k in params.order[i].tolist():
            img = JITTER_FNS[k](img, float(params.factors[i, k]))
        ref = F.to_tensor(F.hflip(img) if bool(params.flip[i]) else img)
        worst = max(worst, (ours[i] - ref).abs().max().item())
    assert worst <= 4.0 / 255.0


def test_crop_with_zero_padding_moves_the_image_and_fills_zeros() -> None:
    images = torch.full((1, 8, 8, 3), 200, dtype=torch.uint8)
    p = LeeParams(torch.tensor([0]), torch.tensor([4]), torch.tensor([False]), None, None, 2)
    out = crop_flip_gather(images, torch.tensor([0]), p)
    assert out[0, :2].eq(0).all() and out[0, 2:, :6].eq(200).all() and out[0, 2:, 6:].eq(0).all()


def test_flip_mirrors_columns_after_the_crop() -> None:
    images = torch.arange(16, dtype=torch.uint8).view(1, 4, 4, 1).expand(1, 4, 4, 3).contiguous()
    p = LeeParams(torch.tensor([1]), torch.tensor([1]), torch.tensor([True]), None, None, 1)
    out = crop_flip_gather(images, torch.tensor([0]), p)
    assert torch.equal(out[0, :, :, 0], images[0, :, :, 0].flip(1))


def test_brightness_factor_one_and_no_jitter_leave_pixels_unchanged() -> None:
    x = torch.rand(3, 5, 5, 3)
    same = color_jitter(x, torch.ones(3, 3), torch.tensor([[0, 1, 2]] * 3))
    assert torch.allclose(same, x, atol=1e-6)


def test_output_is_channels_last_in_the_requested_dtype_and_normalised() -> None:
    images = _images(6, 16)
    params = draw_lee_params(6, torch.Generator().manual_seed(0), 2, jitter=False, flip=False)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    out = apply_lee(images, params, mean, std, dtype=torch.bfloat16)
    assert out.shape == (6, 3, 16, 16) and out.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=torch.channels_last)
    plain = apply_lee(images, params, *IDENTITY)
    expect = (plain - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(out.float(), expect, atol=0.05)


def test_draw_lee_params_follow_the_lee19_distributions() -> None:
    n, pad = 60000, 4
    p = draw_lee_params(n, torch.Generator().manual_seed(0), pad)
    for offsets in (p.top, p.left):
        counts = torch.bincount(offsets, minlength=2 * pad + 1).float()
        assert offsets.min() == 0 and offsets.max() == 2 * pad
        assert (counts / n - 1 / (2 * pad + 1)).abs().max() < 0.01  # uniform over 0..2*pad
    assert abs(p.flip.float().mean().item() - 0.5) < 0.01
    assert p.factors.min() >= 0.6 and p.factors.max() <= 1.4
    assert abs(p.factors.mean().item() - 1.0) < 0.005
    assert abs(p.factors.var().item() - 0.8**2 / 12) < 0.002  # the variance of U[0.6, 1.4]
    assert torch.equal(p.order.sort(dim=1).values, torch.tensor([0, 1, 2]).expand(n, 3))
    orders, counts = torch.unique(p.order, dim=0, return_counts=True)
    assert len(orders) == math.factorial(3)  # all six orders occur ...
    assert (counts.float() / n - 1 / 6).abs().max() < 0.01  # ... equally often


def test_draw_lee_params_is_deterministic_for_a_generator_state() -> None:
    a = draw_lee_params(100, torch.Generator().manual_seed(5), 8)
    b = draw_lee_params(100, torch.Generator().manual_seed(5), 8)
    assert all(torch.equal(x, y) for x, y in zip(a[:5], b[:5]))


@pytest.mark.parametrize("channels,jitter", [(3, True), (3, False), (1, True)])
def test_numba_kernel_equals_the_torch_path(channels: int, jitter: bool) -> None:
    data = _images(40, 32, channels, seed=3)
    rows = torch.randint(0, 40, (64,), generator=torch.Generator().manual_seed(0))
    params = draw_lee_params(64, torch.Generator().manual_seed(4), 4, jitter=jitter)
    mean, std = [0.45] * channels, [0.27] * channels
    ours = augment_rows_numba(data.numpy(), rows, params, mean, std)
    ref = augment_rows(data, rows, params, mean, std)
    assert ours.shape == ref.shape and ours.is_contiguous(memory_format=torch.channels_last)
    assert (ours - ref).abs().max().item() < 1e-4


def test_augment_rows_gathers_the_requested_rows() -> None:
    data = _images(10, 16)
    rows = torch.tensor([3, 3, 7])
    params = LeeParams(torch.full((3,), 2), torch.full((3,), 2), torch.zeros(3, dtype=torch.bool), None, None, 2)
    out = augment_rows(data, rows, params, *IDENTITY)
    assert torch.allclose(out, data[rows].permute(0, 3, 1, 2).float() / 255.0)
    assert np.allclose(augment_rows_numba(data.numpy(), rows, params, *IDENTITY).numpy(), out.numpy())
