"""Argument checks shared by the pipelines stage's public entry points (one helper, not copies).

The augmentation entry points (:func:`pipelines.augment.apply_lee`, ``augment_rows``,
``draw_lee_params``, :func:`pipelines.numba_aug.augment_rows_numba`,
:func:`pipelines.triton_aug.augment_rows_triton`) and the loader's :func:`check_request` call
these before any work, so that a bad argument is a one-line error naming it instead of a
segfault in a compiled kernel or silently wrong images. All checks are O(batch) at most, and
values are only read from CPU tensors: on a device only shapes, dtypes and devices are checked,
because reading a value would make the host wait for the device. The loader's per-batch path
skips them (``check=False``): its plans are valid by construction, checked once in
:func:`fsmtl.pipelines.config.check_request`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from fsmtl.core.checks import InputError, check_int, describe, is_real


PipelineInputError = InputError  # the name pipelines' callers and tests know; one class


def check_mean_std(mean: Sequence[float], std: Sequence[float], channels: int, where: str) -> None:
    """``mean`` and ``std``: ``channels`` finite numbers each, ``std > 0``."""
    try:
        m = np.asarray(mean, dtype=np.float64)
        s = np.asarray(std, dtype=np.float64)
        ok = m.shape == s.shape == (channels,) and bool(np.isfinite(m).all() and np.isfinite(s).all() and (s > 0).all())
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise PipelineInputError(
            f"{where} mean/std: expected {channels} finite values each (one per channel, std > 0), "
            f"got mean {_show(mean)} and std {_show(std)}"
        )


def _show(v: object) -> str:
    try:
        return repr([float(x) for x in v])  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return repr(v)


def check_images(x: object, name: str, numpy: bool = False) -> tuple[int, int, int, int]:
    """``x``: uint8 [N, H, W, C], C in (1, 3), H and W >= 1; a torch tensor (``numpy=True``: a
    numpy array). Returns the shape."""
    kind = "numpy array" if numpy else "torch tensor"
    if not isinstance(x, np.ndarray if numpy else Tensor):
        hint = " (use .numpy())" if numpy and isinstance(x, Tensor) else " (torch.from_numpy)" if isinstance(x, np.ndarray) else ""
        raise PipelineInputError(f"{name}: expected a uint8 {kind} [N,H,W,C], got {describe(x)}{hint}")
    dtype, shape = x.dtype, tuple(x.shape)  # type: ignore[union-attr]
    if dtype not in (np.uint8, torch.uint8):
        raise PipelineInputError(f"{name}: expected uint8 [N,H,W,C] images (0..255), got {dtype} {shape}")
    if len(shape) != 4 or shape[3] not in (1, 3) or shape[1] < 1 or shape[2] < 1:
        nchw = len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3)
        hint = " (NCHW? channels go last: x.permute(0, 2, 3, 1))" if nchw else ""
        raise PipelineInputError(f"{name}: expected uint8 [N,H,W,C] with C = 1 or 3, got shape {shape}{hint}")
    return shape  # type: ignore[return-value]


def check_pad(pad: object, height: int, width: int, where: str) -> int:
    """Crop padding: an int with ``0 <= pad < min(height, width)``."""
    return check_int(pad, f"{where} pad (image {height}x{width})", 0, min(height, width) - 1)


def _tensor(t: object, name: str, dtype: torch.dtype, shape: tuple[int, ...], device: torch.device) -> Tensor:
    if not isinstance(t, Tensor):
        raise PipelineInputError(f"{name}: expected a torch {dtype} tensor {list(shape)}, got {describe(t)}")
    if t.dtype != dtype or tuple(t.shape) != shape:
        raise PipelineInputError(f"{name}: expected {dtype} {list(shape)}, got {t.dtype} {list(t.shape)}")
    if t.device != device:
        raise PipelineInputError(f"{name}: expected a tensor on {device}, got one on {t.device}")
    return t


def check_rows(rows: object, n: int, b: int | None, device: torch.device, where: str) -> int:
    """``rows``: int64 [B] on ``device`` (B = ``b`` if given), values in [0, n) where on the CPU.
    Returns B."""
    if not isinstance(rows, Tensor) or rows.ndim != 1:
        raise PipelineInputError(f"{where} rows: expected a 1-D torch int64 tensor [B], got {describe(rows)}")
    _tensor(rows, f"{where} rows", torch.int64, (rows.shape[0] if b is None else b,), device)
    if rows.device.type == "cpu" and rows.numel():
        lo, hi = (int(v) for v in torch.aminmax(rows))
        if lo < 0 or hi >= n:
            raise PipelineInputError(f"{where} rows: expected values in [0, {n}) (rows of the images), got min {lo}, max {hi}")
    return int(rows.shape[0])


def check_lee_params(params: Any, b: int, height: int, width: int, device: torch.device, where: str) -> None:
    """:class:`pipelines.augment.LeeParams` for ``b`` images on ``device``: dtypes, shapes, pad
    vs the image size, and (CPU tensors) offsets in [0, 2*pad] and orders that are permutations."""
    fields = ("top", "left", "flip", "factors", "order", "pad")
    if not isinstance(params, tuple) or not all(hasattr(params, f) for f in fields):
        raise PipelineInputError(f"{where} params: expected LeeParams (from draw_lee_params), got {describe(params)}")
    pad = check_pad(params.pad, height, width, f"{where} params")
    name = f"{where} params"
    top = _tensor(params.top, f"{name}.top", torch.int64, (b,), device)
    left = _tensor(params.left, f"{name}.left", torch.int64, (b,), device)
    _tensor(params.flip, f"{name}.flip", torch.bool, (b,), device)
    if (params.factors is None) != (params.order is None):
        raise PipelineInputError(f"{name}: expected factors and order both set (jitter) or both None, got one of them")
    order = None
    if params.factors is not None:
        f = params.factors
        if not isinstance(f, Tensor) or not f.is_floating_point():
            raise PipelineInputError(f"{name}.factors: expected a float tensor [{b}, 3], got {describe(f)}")
        _tensor(f, f"{name}.factors", f.dtype, (b, 3), device)
        order = _tensor(params.order, f"{name}.order", torch.int64, (b, 3), device)
    if device.type != "cpu" or b == 0:
        return
    for t, what in ((top, "top"), (left, "left")):
        lo, hi = (int(v) for v in torch.aminmax(t))
        if lo < 0 or hi > 2 * pad:
            raise PipelineInputError(f"{name}.{what}: expected values in [0, {2 * pad}] (2 * pad), got min {lo}, max {hi}")
    if order is not None and not bool((order.sort(dim=1).values == torch.arange(3)).all()):
        raise PipelineInputError(f"{name}.order: expected a permutation of (0, 1, 2) in every row")


def check_augment_args(
    where: str,
    data: object,
    rows: object,
    params: Any,
    mean: Sequence[float],
    std: Sequence[float],
    numpy_data: bool = False,
    plan_device: torch.device | None = None,
) -> tuple[int, int, int, int]:
    """Everything an augment-rows entry point takes: ``data`` uint8 [N, H, W, C] (numpy if
    ``numpy_data``), ``rows`` int64 [B] in [0, N), ``params`` for B images, per-channel
    ``mean``/``std``. Rows and params must be on ``plan_device`` (default: data's device).
    Returns data's shape."""
    n, h, w, c = check_images(data, f"{where} data", numpy=numpy_data)
    device = plan_device or (torch.device("cpu") if numpy_data else data.device)  # type: ignore[union-attr]
    b = check_rows(rows, n, None, device, where)
    check_lee_params(params, b, h, w, device, where)
    check_mean_std(mean, std, c, where)
    return n, h, w, c


def check_out_dtype(dtype: object, name: str) -> torch.dtype:
    """An output dtype: torch.float32, float16 or bfloat16."""
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise PipelineInputError(f"{name}: expected torch.float32, torch.float16 or torch.bfloat16, got {describe(dtype)}")
    return dtype  # type: ignore[return-value]


def check_strength(strength: object, name: str) -> float:
    """A jitter strength in [0, 1] (factors are drawn from [1 - s, 1 + s] and must stay >= 0)."""
    if not is_real(strength) or not math.isfinite(strength) or not 0.0 <= strength <= 1.0:  # type: ignore[arg-type]
        raise PipelineInputError(f"{name}: expected a number in [0, 1], got {describe(strength)}")
    return float(strength)  # type: ignore[arg-type]
