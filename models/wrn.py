"""Wide ResNet 28-10 (Zagoruyko & Komodakis, 2016): pre-activation blocks, widths 160-320-640."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fsmtl.core.checks import is_int
from fsmtl.core.errors import FsmtlError
from fsmtl.models.checks import check_drop_rate, check_image_size
from fsmtl.models.init import init_conv_bn


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3 (stride) - [dropout] - BN-ReLU-conv3x3, plus a (1x1 conv) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.drop_rate = float(drop_rate)
        self.shortcut: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        if self.drop_rate > 0.0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(F.relu(self.bn2(out)))
        # the projection shortcut reads the pre-activated input, as in the reference WRN
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """``forward(x float [B,C,H,W]) -> float [B, 64 * widen]`` (640-d for WRN-28-10).

    Any input side >= 1 px works (padded strided convolutions); ``drop_rate`` is in [0, 1).
    """

    def __init__(
        self, in_channels: int = 3, image_size: int = 84, depth: int = 28, widen: int = 10, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        name = f"wrn{depth}_{widen}"
        check_image_size(name, image_size, halvings=0)
        drop_rate = check_drop_rate(name, drop_rate)
        if not is_int(depth) or depth < 10 or (depth - 4) % 6 != 0:
            raise FsmtlError(f"model {name}: depth must be 6n+4 with n >= 1, got {depth!r}")
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        cin = 16
        for g, width in enumerate(widths):
            for i in range(n):
                blocks.append(WideBlock(cin, width, (1 if g == 0 else 2) if i == 0 else 1, drop_rate))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        init_conv_bn(self, "relu")

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.blocks(self.stem(x))))
        return x.mean(dim=(2, 3))
