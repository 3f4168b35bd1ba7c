"""DropBlock (Ghiasi et al., 2018) with a drop rate that ramps with a training-step counter.

The ramp is computed from a step tensor on the device, so setting and reading it never forces a
host-device synchronisation inside a training step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def dropblock_gamma(rate: Tensor, block_size: int, height: int, width: int) -> Tensor:
    """Probability that a position is a block centre, for a target drop ``rate`` (any shape).

    Positions are only sampled where a whole block fits, so the rate is rescaled by the ratio of
    all positions to valid centres (the RFS / DropBlock-paper formula).
    """
    valid = (height - block_size + 1) * (width - block_size + 1)
    return rate / (block_size**2) * (height * width) / valid


def dropblock(x: Tensor, rate: Tensor, block_size: int) -> Tensor:
    """Zero random ``block_size`` x ``block_size`` squares of each channel, rescaling the rest.

    Args:
        x: float [B, C, H, W].
        rate: float scalar tensor in [0, 1), the expected fraction of dropped units.
        block_size: side of a dropped square; clamped to the feature map size.

    Returns:
        float [B, C, H, W], ``x * mask * numel(mask) / sum(mask)`` (the global torch RNG draws the mask).
    """
    b, c, h, w = x.shape
    bs = max(1, min(block_size, h, w))
    gamma = dropblock_gamma(rate.to(torch.float32), bs, h, w)
    centres = torch.rand(b, c, h - bs + 1, w - bs + 1, device=x.device) < gamma
    centres = centres.to(x.dtype)
    # pad so that a centre at (i, j) covers (i..i+bs-1, j..j+bs-1) after a stride-1 max-pool
    pad = bs - 1
    covered = F.max_pool2d(F.pad(centres, (pad, pad, pad, pad)), kernel_size=bs, stride=1)
    keep = 1.0 - covered[:, :, :h, :w]
    scale = keep.numel() / keep.sum(dtype=torch.float32).clamp_min(1.0)
    return x * keep * scale.to(x.dtype)


class RampedDropBlock(nn.Module):
    """DropBlock whose rate grows linearly from 0 to ``drop_rate`` over ``ramp_steps`` steps.

    The step lives in the ``step`` buffer of the owning network (shared, so one ``fill_`` per
    training step updates every block, and it is saved with the state dict).
    """

    def __init__(self, drop_rate: float, block_size: int, ramp_steps: int) -> None:
        super().__init__()
        if not 0.0 <= drop_rate < 1.0:  # 1 would drop everything (and the rescale would divide by 0)
            raise ValueError(f"DropBlock drop_rate must be in [0, 1), got {drop_rate!r}")
        self.drop_rate = float(drop_rate)
        self.block_size = int(block_size)
        self.ramp_steps = max(1, int(ramp_steps))

    def current_rate(self, step: Tensor) -> Tensor:
        """float32 scalar: ``drop_rate * min(1, step / ramp_steps)``."""
        frac = (step.to(torch.float32) / self.ramp_steps).clamp(max=1.0)
        return self.drop_rate * frac

    def forward(self, x: Tensor, step: Tensor) -> Tensor:
        if not self.training or self.drop_rate <= 0.0:
            return x
        return dropblock(x, self.current_rate(step), self.block_size)

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate}, block_size={self.block_size}, ramp_steps={self.ramp_steps}"
