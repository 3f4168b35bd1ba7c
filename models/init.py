"""The weight initialisation every backbone here shares."""

from __future__ import annotations

from torch import nn


def init_conv_bn(module: nn.Module, nonlinearity: str = "relu") -> None:
    """Kaiming-normal (fan_out) convolutions for ``nonlinearity``; BatchNorm weight 1, bias 0.

    ResNet-12 (RFS) uses ``"leaky_relu"``; ResNet-18 and WRN use ``"relu"``.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity=nonlinearity)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
