"""Batch conversions shared by training and evaluation: uint8 NHWC -> normalised float NCHW."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def normalize_batch(
    images: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
) -> Tensor:
    """Convert uint8 images to normalised floats, on the images' device.

    Args:
        images: uint8 [B, H, W, C].
        mean, std: per-channel, on the 0..1 scale (the shard's meta.json values).
        dtype: output dtype (float32, bfloat16 or float16); arithmetic is done in float32.
        channels_last: return a channels_last-strided tensor (a free view of NHWC data).

    Returns:
        dtype [B, C, H, W], ``(x / 255 - mean) / std``.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 [B,H,W,C], got {images.dtype} {tuple(images.shape)}")
    c = images.shape[-1]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} values for {c} channels")
    return normalize_nhwc(images.to(torch.float32) / 255.0, mean, std, dtype, channels_last)


def normalize_nhwc(
    x: Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype, channels_last: bool
) -> Tensor:
    """float [B, H, W, C] in [0, 1] -> ``dtype`` [B, C, H, W], ``(x - mean) / std``.

    The constants go to the device without blocking: a blocking copy would make the host wait
    for the device's stream (a synchronisation per batch)."""
    m, s = torch.tensor([list(mean), list(std)], dtype=torch.float32).to(x.device, non_blocking=True)
    y = ((x - m) / s).permute(0, 3, 1, 2)
    if not channels_last:
        y = y.contiguous()
    return y.to(dtype)


# Test-time transform sets (``fsmtl eval --transforms``): each a tuple of (quarter turns, mirror)
# applied alike to every image of a task, support and queries, so that each transformed task is a
# task again; the heads' scores are averaged over the set. "rot4": the four rotations, in
# distribution for a backbone trained with rotated classes (Omniglot's converter default);
# "d4": the eight symmetries of the square (rotations of the image and of its mirror).
TEST_TRANSFORMS: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "flip": ((0, False), (0, True)),
    "rot4": ((0, False), (1, False), (2, False), (3, False)),
    "d4": ((0, False), (1, False), (2, False), (3, False), (0, True), (1, True), (2, True), (3, True)),
}


def dihedral(images: Tensor, turns: int, mirror: bool) -> Tensor:
    """One symmetry of the square applied to a batch of images.

    Args:
        images: any dtype [B, H, W, C]; H == W when ``turns`` is odd.
        turns: quarter turns counter-clockwise (any integer, taken mod 4).
        mirror: flip left-right first.

    Returns:
        Same dtype and shape [B, H, W, C] (a contiguous copy; the input itself when nothing changes).
    """
    if images.ndim != 4:
        raise ValueError(f"expected [B,H,W,C] images, got {tuple(images.shape)}")
    turns %= 4
    if turns % 2 and images.shape[1] != images.shape[2]:
        raise ValueError(f"a quarter turn needs square images, got {images.shape[1]}x{images.shape[2]}")
    out = torch.flip(images, (2,)) if mirror else images
    out = torch.rot90(out, turns, (1, 2)) if turns else out
    return out.contiguous() if out is not images else images
