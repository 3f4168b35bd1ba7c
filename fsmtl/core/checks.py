"""The argument checks every layer shares: what counts as an integer or a real, how a bad value is
described in a message, and the integer-range check. Domain checks (a pipeline request, a head's
task tensors, a backbone's sizes) live with their stage and are built from these."""

from __future__ import annotations

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
