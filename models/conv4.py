"""Conv-4: four [3x3 conv 64, BatchNorm, ReLU, 2x2 max-pool] blocks (~113k params at 3 channels)."""

from __future__ import annotations

from torch import Tensor, nn

from fsmtl.models.checks import check_image_size, check_model_int


class Conv4(nn.Module):
    """``forward(x float [B,C,H,W]) -> float [B, 64 * (H/16) * (W/16)]`` (flattened final map).

    The final map is flattened, as in Prototypical Networks: 1600-d at 84x84, 256-d at 32x32,
    64-d at 28x28. Inputs need at least 16 px (four 2x2 max-pools).
    """

    def __init__(self, in_channels: int = 3, image_size: int = 84, width: int = 64) -> None:
        super().__init__()
        check_image_size("conv4", image_size, halvings=4)
        width = check_model_int("conv4", "width", width, 1)
        layers: list[nn.Module] = []
        cin = in_channels
        for _ in range(4):
            layers += [nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2))
            cin = width
        self.features = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).flatten(1)
