"""ResNet-12 as used by RFS / MetaOptNet and the MTL paper (widths 64-160-320-640, ~12.4M params)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsmtl.core.errors import FsmtlError
from fsmtl.models.checks import check_drop_rate, check_image_size, check_model_int
from fsmtl.models.dropblock import RampedDropBlock
from fsmtl.models.init import init_conv_bn


def _conv_bn(cin: int, cout: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout)]


class ResBlock12(nn.Module):
    """Three 3x3 conv+BN (LeakyReLU after the first two), 1x1 conv+BN shortcut, add, LeakyReLU,
    2x2 max-pool, then dropout (blocks 1-2) or ramped DropBlock (blocks 3-4)."""

    def __init__(
        self, cin: int, cout: int, drop_rate: float, use_dropblock: bool, block_size: int, ramp_steps: int
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(cin, cout, 3), nn.LeakyReLU(0.1),
            *_conv_bn(cout, cout, 3), nn.LeakyReLU(0.1),
            *_conv_bn(cout, cout, 3),
        )  # fmt: skip
        self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1))
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)
        self.drop_rate = float(drop_rate)
        self.dropblock = RampedDropBlock(drop_rate, block_size, ramp_steps) if use_dropblock else None

    def forward(self, x: Tensor, step: Tensor) -> Tensor:
        out = self.pool(self.act(self.body(x) + self.shortcut(x)))
        if self.dropblock is not None:
            return self.dropblock(out, step)
        if self.drop_rate > 0.0:
            return F.dropout(out, p=self.drop_rate, training=self.training)
        return out


class ResNet12(nn.Module):
    """ResNet-12 backbone: ``forward(x float [B,C,H,W]) -> float [B, widths[-1]]``.

    Args:
        in_channels: input channels (3 for colour, 1 for Omniglot).
        image_size: input side, >= 16 (four 2x2 max-pools); DropBlock's block size is 5 at >= 64 px
            and 2 below (RFS).
        drop_rate: dropout rate in blocks 1-2 and final DropBlock rate in blocks 3-4 (0.1 in the
            seed), in [0, 1).
        dropblock_size: override the block size (>= 1).
        ramp_steps: batches over which DropBlock's rate ramps from 0 (40,000 in RFS; 0: no ramp).
        widths: channel widths of the four blocks (64, 160, 320, 640 as published).

    Raises:
        FsmtlError: any of these out of range.
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 84,
        drop_rate: float = 0.1,
        dropblock_size: int | None = None,
        ramp_steps: int = 40_000,
        widths: Sequence[int] = (64, 160, 320, 640),
    ) -> None:
        super().__init__()
        check_image_size("resnet12", image_size, halvings=4)
        drop_rate = check_drop_rate("resnet12", drop_rate)
        if dropblock_size is not None:
            dropblock_size = check_model_int("resnet12", "dropblock_size", dropblock_size, 1)
        ramp_steps = check_model_int("resnet12", "ramp_steps", ramp_steps, 0)
        widths = list(widths)
        if len(widths) != 4:
            raise FsmtlError(f"model resnet12: widths must be 4 channel counts, got {widths}")
        widths = [check_model_int("resnet12", "widths", w, 1) for w in widths]
        block_size = dropblock_size if dropblock_size is not None else (5 if image_size >= 64 else 2)
        chans = [in_channels, *widths]
        self.blocks = nn.ModuleList(
            ResBlock12(chans[i], chans[i + 1], drop_rate, i >= 2, block_size, ramp_steps) for i in range(4)
        )
        # training step for DropBlock's ramp; a buffer so it is checkpointed and moves with the model
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_conv_bn(self, "leaky_relu")

    def set_train_step(self, step: int) -> None:
        """Set the step that DropBlock's ramp reads (no host sync: a device-side fill)."""
        self.step.fill_(step)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x, self.step)
        return x.mean(dim=(2, 3))
