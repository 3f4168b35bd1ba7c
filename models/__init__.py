"""Backbones by name: ``build_model("resnet12", in_channels=3, image_size=84, drop_rate=0.1)``.

Every backbone maps float [B, C, H, W] to features float [B, D]; D comes from
:func:`feature_dim` (a dummy forward pass), never from a table.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import nn

from fsmtl.core.checks import is_int
from fsmtl.core.errors import FsmtlError
from fsmtl.models.conv4 import Conv4
from fsmtl.models.resnet12 import ResNet12
from fsmtl.models.resnet18 import ResNet18
from fsmtl.models.wrn import WideResNet


def _wrn28_10(in_channels: int = 3, image_size: int = 84, drop_rate: float = 0.0) -> nn.Module:
    return WideResNet(in_channels, image_size, depth=28, widen=10, drop_rate=drop_rate)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet12": ResNet12,
    "conv4": Conv4,
    "resnet18": ResNet18,
    "wrn28_10": _wrn28_10,
}
MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def model_kwarg_names(name: str) -> set[str]:
    """The keyword options ``name`` accepts beyond ``in_channels`` and ``image_size``."""
    if name not in _BUILDERS:
        raise FsmtlError(f"model: expected one of {', '.join(MODEL_NAMES)}, got {name!r}")
    params = inspect.signature(_BUILDERS[name]).parameters
    return {p for p in params if p not in ("self", "in_channels", "image_size")}


def build_model(name: str, in_channels: int = 3, image_size: int = 84, **kwargs: Any) -> nn.Module:
    """Build backbone ``name`` for ``in_channels`` x ``image_size`` x ``image_size`` inputs.

    Args:
        name: one of ``MODEL_NAMES``.
        in_channels: 1 or 3 (an int).
        image_size: the input side in px, an int the model can take: >= 16 for conv4 and
            resnet12 (four 2x2 max-pools), >= 1 for resnet18 and wrn28_10.
        kwargs: the model's own options (``model_kwarg_names(name)``), e.g. ``drop_rate`` in [0, 1).

    Raises:
        FsmtlError: for an unknown name, an option the model does not take, or a value out of range.
    """
    unknown = set(kwargs) - model_kwarg_names(name)
    if unknown:
        raise FsmtlError(
            f"model {name}: unknown option(s) {sorted(unknown)}; it takes {sorted(model_kwarg_names(name))}"
        )
    if not is_int(in_channels) or in_channels not in (1, 3):
        raise FsmtlError(f"model {name}: in_channels must be the int 1 or 3, got {in_channels!r}")
    in_channels = int(in_channels)
    return _BUILDERS[name](in_channels=in_channels, image_size=image_size, **kwargs)


@torch.no_grad()
def feature_dim(model: nn.Module, in_channels: int = 3, image_size: int = 84) -> int:
    """Width D of ``model``'s features, from one eval-mode forward of a zero image (2 for BatchNorm)."""
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        x = torch.zeros(2, in_channels, image_size, image_size, device=p.device, dtype=p.dtype)
        return int(model(x).shape[-1])
    finally:
        model.train(was_training)


def set_train_step(model: nn.Module, step: int) -> None:
    """Tell every part of ``model`` that schedules on the training step (DropBlock's ramp) the step."""
    for m in model.modules():
        if m is not model and hasattr(m, "set_train_step"):
            m.set_train_step(step)
    if hasattr(model, "set_train_step"):
        model.set_train_step(step)


__all__ = ["MODEL_NAMES", "build_model", "feature_dim", "model_kwarg_names", "set_train_step"]
