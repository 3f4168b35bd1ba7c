"""Argument checks every backbone shares: a bad size or rate fails when the model is built, not in
its first forward pass (or never, as a dropout rate of 1 or below 0 would)."""

from __future__ import annotations

import math
from typing import Any

from fsmtl.core.checks import is_int, is_real
from fsmtl.core.errors import FsmtlError


def check_model_int(model: str, name: str, value: Any, minimum: int, why: str = "") -> int:
    """``value`` as an int if it is an integer (numpy's too, not a bool) >= ``minimum``."""
    if not is_int(value) or value < minimum:
        raise FsmtlError(f"model {model}: {name} must be an integer >= {minimum}{why}, got {value!r}")
    return int(value)


def check_image_size(model: str, image_size: Any, halvings: int) -> int:
    """The input side, at least ``2 ** halvings`` px for a model that halves it that many times
    by flooring 2x2 pools (the last map must keep at least one pixel)."""
    why = f" ({halvings} 2x2 poolings each halve it)" if halvings else ""
    return check_model_int(model, "image_size", image_size, 2**halvings, why)


def check_drop_rate(model: str, drop_rate: Any) -> float:
    """A dropout rate in [0, 1): 1 would zero every feature, and a negative rate means nothing."""
    if not (is_real(drop_rate) and math.isfinite(drop_rate) and 0.0 <= drop_rate < 1.0):
        raise FsmtlError(f"model {model}: drop_rate must be a number in [0, 1), got {drop_rate!r}")
    return float(drop_rate)
