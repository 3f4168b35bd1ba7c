"""The argument checks every layer shares: what counts as an integer or a real, how a bad value is
described in a message, and the integer-range check. Domain checks (a pipeline request, a head's
task tensors, a backbone's sizes) live with their stage and are built from these."""

from __future__ import annotations

import math
import numbers

import numpy as np
from torch import Tensor

from fsmtl.core.errors import FsmtlError


class InputError(FsmtlError, ValueError):
    """A bad argument to a library function: a :class:`FsmtlError` (one line, exit code 2 at the
    CLI) that is also a ``ValueError``, as library callers expect of a bad argument."""


def is_int(v: object) -> bool:
    """A Python or numpy integer, not a bool (``True`` is an int to Python, never a count here)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def is_real(v: object) -> bool:
    """A Python or numpy real number, not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def describe(v: object) -> str:
    """What was found, for messages: ``a numpy array``, ``float 2.5``, ``str '5'``."""
    if isinstance(v, np.ndarray):
        return f"a numpy array ({v.dtype} {v.shape})"
    if isinstance(v, Tensor):
        return f"a torch tensor ({v.dtype} {tuple(v.shape)} on {v.device})"
    return f"{type(v).__name__} {v!r}"


def check_int(v: object, name: str, lo: int, hi: int | None = None) -> int:
    """``v`` as an int in ``[lo, hi]`` (``hi`` None: no upper bound); else :class:`InputError`."""
    want = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
    if not is_int(v) or v < lo or (hi is not None and v > hi):  # type: ignore[operator]
        raise InputError(f"{name}: expected {want}, got {describe(v)}")
    return int(v)  # type: ignore[call-overload]


INT64_MAX = 2**63 - 1  # counts and budgets end up in torch/numpy int64 (steps, tensor sizes, JSON)
SEED_MAX = 2**64 - 1  # torch.manual_seed takes [0, 2**64 - 1]; numpy any non-negative integer


def check_real(v: object, name: str, lo: float, hi: float | None = None, *, lo_open: bool = False,
               hi_open: bool = False) -> float:
    """``v`` as a finite float in the interval ``lo..hi`` (open ends as asked; nan and inf never
    pass); else :class:`InputError` naming ``name`` and the interval."""
    left, right = ("(" if lo_open else "["), (")" if hi_open else "]")
    want = f"a finite number > {lo}" if lo_open else f"a finite number >= {lo}"
    if hi is not None:
        want = f"a number in {left}{lo}, {hi}{right}"
    ok = is_real(v) and math.isfinite(v)  # type: ignore[arg-type]
    if ok:
        x = float(v)  # type: ignore[arg-type]
        ok = (x > lo if lo_open else x >= lo) and (hi is None or (x < hi if hi_open else x <= hi))
    if not ok:
        raise InputError(f"{name}: expected {want}, got {v!r}")
    return float(v)  # type: ignore[arg-type]
