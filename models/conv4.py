"""Conv-4: four [3x3 conv 64, BatchNorm, ReLU, 2x2 max-pool] blocks (~113k params at 3 channels)."""

from __future__ import annotations

from torch import Tensor, nn

from fsmtl.core.errors import FsmtlError
from fsmtl.models.checks import check_image_size, check_model_int


class Conv4(nn.Module):
    """``forward(x float [B,C,H,W]) -> float [B, 64 * (H/16) * (W/16)]`` (flattened final map).

    The final map is flattened, as in Prototypical Networks: 1600-d at 84x84, 256-d at 32x32,
    64-d at 28x28. Inputs need at least 16 px (four 2x2 max-pools).

    ``pools`` < 4 drops the max-pools of the last ``4 - pools`` blocks: the convolutions cost the
    same when only the last pool goes (it follows the last convolution), and the features grow 4x
    (1024-d at 32x32, 576-d at 28x28), so small images keep their spatial detail for the heads.
    Output: ``64 * (H / 2**pools) * (W / 2**pools)`` (floored) features.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 84, width: int = 64, pools: int = 4) -> None:
        super().__init__()
        pools = check_model_int("conv4", "pools", pools, 0)
        if pools > 4:
            raise FsmtlError(f"model conv4: pools must be an integer in [0, 4] (one a block at most), got {pools}")
        check_image_size("conv4", image_size, halvings=pools)
        width = check_model_int("conv4", "width", width, 1)
        layers: list[nn.Module] = []
        cin = in_channels
        for block in range(4):
            layers += [nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            if block < pools:
                layers.append(nn.MaxPool2d(2))
            cin = width
        self.features = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).flatten(1)
