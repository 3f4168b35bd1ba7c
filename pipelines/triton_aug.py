"""The Lee19 augmentation as one fused Triton kernel (the torch back end's default CUDA path).

Same parameters and semantics as :mod:`pipelines.augment`; tested equal to it (on the CPU through
Triton's interpreter, ``TRITON_INTERPRET=1``; on a GPU by ``benchmarks/gpu_check.sh``). Why: the
torch ops make about 35 full passes over the batch in GPU memory (gather, mask, float, three blends
each with a gray image and a mean, normalise), some 3.9 MB of traffic per 84x84 image, which caps
an H100 near 0.8M images/s before launch overheads. Here one program per image reads its uint8
source twice (pass 1: the gray mean that contrast blends toward, through the ops before it;
pass 2: crop, flip, the three ops, normalisation, one store in the output dtype): about 2 bytes
read (mostly from cache) and 2 to 4 written per value.

The jitter is given per image as three op slots ``(f, a)`` plus the slot of contrast
(:func:`pipelines.augment.jitter_slots`): slot ``k`` maps a pixel ``v`` to
``clamp(f v + a gray(v) + t)``, ``t = (1 - f) mean`` in contrast's slot and 0 elsewhere.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from fsmtl.pipelines.augment import LeeParams, jitter_slots
from fsmtl.pipelines.checks import PipelineInputError, check_augment_args, check_out_dtype


@triton.jit
def _op(v0, v1, v2, f, a, t, C: tl.constexpr):  # type: ignore[no-untyped-def]
    """One jitter slot on a block of pixels: ``clamp(f v + a gray(v) + t)`` per channel.

    The gray weights are torchvision's (``pipelines.augment.GRAY_WEIGHTS``), as literals: a jit
    function reads no Python globals."""
    if C == 3:
        g = a * (0.2989 * v0 + 0.587 * v1 + 0.114 * v2) + t
    else:
        g = t
    r0 = tl.minimum(tl.maximum(f * v0 + g, 0.0), 1.0)
    r1 = tl.minimum(tl.maximum(f * v1 + g, 0.0), 1.0)
    r2 = tl.minimum(tl.maximum(f * v2 + g, 0.0), 1.0)
    return r0, r1, r2


@triton.jit
def _pixels(src, p, y0, x0, flip, H, W, C: tl.constexpr):  # type: ignore[no-untyped-def]
    """Output pixels ``p`` (a block of flat indices) of the cropped, flipped image, in [0, 1].

    Crop windows reach into the zero padding: those pixels (and ``p`` past the image) load 0."""
    oy = p // W
    ox = p % W
    sx = tl.where(flip != 0, W - 1 - ox, ox)
    ys = y0 + oy
    xs = x0 + sx
    ok = (p < H * W) & (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)
    off = (ys * W + xs) * C
    v0 = tl.load(src + off, mask=ok, other=0).to(tl.float32) * (1.0 / 255.0)
    if C == 3:
        v1 = tl.load(src + off + 1, mask=ok, other=0).to(tl.float32) * (1.0 / 255.0)
        v2 = tl.load(src + off + 2, mask=ok, other=0).to(tl.float32) * (1.0 / 255.0)
    else:
        v1 = v0
        v2 = v0
    return v0, v1, v2


# B (images in the launch) is not specialised on, so the kernel compiled by the start-up self-check
# (a few images) is the one every batch group runs.
@triton.jit(do_not_specialize=["B"])
def _lee_kernel(  # type: ignore[no-untyped-def]
    data, ints, coef, out, B, H, W, PAD,
    m0, m1, m2, s0, s1, s2,
    C: tl.constexpr, BLOCK: tl.constexpr, JITTER: tl.constexpr,
):  # fmt: skip
    """One program per output image b: ``out[b]`` (NHWC, any float dtype) from ``data[ints[ROW, b]]``."""
    b = tl.program_id(0)
    row = tl.load(ints + b)  # the rows of ints: row, top, left, flip, contrast slot (pack_plan)
    y0 = tl.load(ints + B + b) - PAD
    x0 = tl.load(ints + 2 * B + b) - PAD
    flip = tl.load(ints + 3 * B + b)
    src = data + row * (H * W * C)
    dst = out + b.to(tl.int64) * (H * W * C)
    npix = H * W
    f0 = tl.load(coef + b * 6 + 0)
    a0 = tl.load(coef + b * 6 + 1)
    f1 = tl.load(coef + b * 6 + 2)
    a1 = tl.load(coef + b * 6 + 3)
    f2 = tl.load(coef + b * 6 + 4)
    a2 = tl.load(coef + b * 6 + 5)
    t0 = 0.0
    t1 = 0.0
    t2 = 0.0
    if JITTER:  # every image then has a contrast slot cs: pass 1 finds the mean it blends toward
        cs = tl.load(ints + 4 * B + b)
        # the slots before contrast, as in pass 2; later ones become the identity (1, 0)
        g0 = tl.where(cs > 0, f0, 1.0)
        h0 = tl.where(cs > 0, a0, 0.0)
        g1 = tl.where(cs > 1, f1, 1.0)
        h1 = tl.where(cs > 1, a1, 0.0)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, npix, BLOCK):
            p = start + tl.arange(0, BLOCK)
            v0, v1, v2 = _pixels(src, p, y0, x0, flip, H, W, C)
            v0, v1, v2 = _op(v0, v1, v2, g0, h0, 0.0, C)
            v0, v1, v2 = _op(v0, v1, v2, g1, h1, 0.0, C)
            if C == 3:
                acc += 0.2989 * v0 + 0.587 * v1 + 0.114 * v2
            else:
                acc += v0
        mean = tl.sum(acc, axis=0) / npix  # pixels past the image loaded 0 and stay 0
        t0 = tl.where(cs == 0, (1.0 - f0) * mean, 0.0)
        t1 = tl.where(cs == 1, (1.0 - f1) * mean, 0.0)
        t2 = tl.where(cs == 2, (1.0 - f2) * mean, 0.0)
    # pass 2: every output pixel through the three slots and the normalisation, stored once
    for start in range(0, npix, BLOCK):
        p = start + tl.arange(0, BLOCK)
        v0, v1, v2 = _pixels(src, p, y0, x0, flip, H, W, C)
        if JITTER:
            v0, v1, v2 = _op(v0, v1, v2, f0, a0, t0, C)
            v0, v1, v2 = _op(v0, v1, v2, f1, a1, t1, C)
            v0, v1, v2 = _op(v0, v1, v2, f2, a2, t2, C)
        live = p < npix
        # the store converts to the output dtype (round to nearest even when compiled)
        tl.store(dst + p * C, (v0 - m0) / s0, mask=live)
        if C == 3:
            tl.store(dst + p * C + 1, (v1 - m1) / s1, mask=live)
            tl.store(dst + p * C + 2, (v2 - m2) / s2, mask=live)


def pack_plan(rows: Tensor, params: LeeParams, channels: int) -> tuple[Tensor, Tensor]:
    """The kernel's per-image inputs as two CPU tensors (two host-to-device copies).

    Args:
        rows: int64 [B] rows of the split. params: CPU :class:`LeeParams` for B images.
        channels: 1 or 3.

    Returns:
        ints int64 [5, B] (row, top, left, flip, contrast slot: 3 for none) and coef float32 [B, 6]
        (f, a of slots 0, 1, 2; see :func:`pipelines.augment.jitter_slots`).
    """
    coef, slot = jitter_slots(params, channels)
    ints = torch.stack([rows, params.top, params.left, params.flip.to(torch.int64), slot])
    return ints, coef.reshape(-1, 6).contiguous()


def augment_packed(
    data: Tensor,
    ints: Tensor,
    coef: Tensor,
    pad: int,
    jitter: bool,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
) -> Tensor:
    """Run the kernel on packed inputs (all on ``data``'s device). Unchecked (the loader's
    per-batch path, whose plans are valid by construction): call :func:`augment_rows_triton`.

    Args:
        data: uint8 [N, H, W, C], C-contiguous (a resident split, or staged rows).
        ints: int64 [R >= 5, B] whose first five rows are :func:`pack_plan`'s (contiguous: row
            ``k`` starts at ``k * B``); coef: float32 [B, 6], as from :func:`pack_plan`.

    Returns:
        ``dtype`` [B, C, H, W] normalised, channels_last strides unless ``channels_last=False``.
    """
    _, h, w, c = data.shape
    b = ints.shape[1]
    out = torch.empty((b, h, w, c), dtype=dtype, device=data.device)
    if b:
        m = [float(v) for v in mean] + [0.0] * (3 - c)
        s = [float(v) for v in std] + [1.0] * (3 - c)
        block = min(1024, triton.next_power_of_2(h * w))
        # Triton launches on the current device: make it data's (a run on cuda:1 without set_device)
        on = torch.cuda.device(data.device) if data.device.type == "cuda" else contextlib.nullcontext()
        with on:
            _lee_kernel[(b,)](data, ints, coef, out, b, h, w, int(pad), *m, *s, C=c, BLOCK=block, JITTER=bool(jitter))
    y = out.permute(0, 3, 1, 2)
    return y if channels_last else y.contiguous()


def augment_rows_triton(
    data: Tensor,
    rows: Tensor,
    params: LeeParams,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
) -> Tensor:
    """Lee19 on ``data[rows]`` with CPU ``params``; equals :func:`pipelines.augment.augment_rows`.

    Args:
        data: uint8 [N, H, W, C] C-contiguous, C = 1 or 3, on the device (CUDA; the CPU under
            ``TRITON_INTERPRET=1``).
        rows: int64 [B] in [0, N) (CPU). params: CPU :class:`LeeParams` for B images.
        mean, std: C values each, finite, std > 0. dtype: torch.float32, float16 or bfloat16.

    Raises:
        PipelineInputError: naming the argument and what was expected; checked on the CPU
            tensors before the upload (the kernel trusts them: a row out of range reads outside
            ``data``).
    """
    check_augment_args("augment_rows_triton", data, rows, params, mean, std, plan_device=torch.device("cpu"))
    check_out_dtype(dtype, "augment_rows_triton dtype")
    if not data.is_contiguous():
        raise PipelineInputError("augment_rows_triton data: expected a C-contiguous tensor (the kernel indexes it flat); use .contiguous()")
    ints, coef = pack_plan(rows, params, data.shape[3])
    dev = data.device
    return augment_packed(
        data, ints.to(dev, non_blocking=True), coef.to(dev, non_blocking=True), params.pad,
        params.factors is not None, mean, std, dtype, channels_last,
    )  # fmt: skip
