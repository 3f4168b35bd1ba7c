"""ResNet-18 (torchvision-style basic blocks, widths 64-128-256-512, ~11.2M params).

Stem: at inputs of 64 px and more, the ImageNet stem (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2
max-pool); below 64 px, a 3x3 stride-1 conv and no max-pool, as is usual for CIFAR-sized few-shot
benchmarks (the ImageNet stem would shrink a 32x32 image to 8x8 before the first block).
"""

from __future__ import annotations

from torch import Tensor, nn

from fsmtl.models.checks import check_image_size
from fsmtl.models.init import init_conv_bn


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut (1x1 conv+BN when the shape changes), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """``forward(x float [B,C,H,W]) -> float [B, 512]`` (global average pool).

    Any input side >= 1 px works (padded strided convolutions keep at least one pixel);
    ``image_size`` picks the stem.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 84) -> None:
        super().__init__()
        check_image_size("resnet18", image_size, halvings=0)
        if image_size >= 64:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
                nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1),
            )  # fmt: skip
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
            )
        layers: list[nn.Module] = []
        cin = 64
        for i, width in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            layers += [BasicBlock(cin, width, stride), BasicBlock(width, width, 1)]
            cin = width
        self.layers = nn.Sequential(*layers)
        init_conv_bn(self, "relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(self.stem(x)).mean(dim=(2, 3))
