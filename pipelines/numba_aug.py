"""The Lee19 augmentation as one fused, numba-parallel CPU kernel (the torch back end's CPU path).

Same parameters and semantics as :mod:`pipelines.augment`; tested equal to it. Why a separate
kernel: on a CPU the torch path makes ~10 full passes over the batch in memory (gather, mask,
float, three blends each with a gray image and a mean, normalise), each a separate op over a
tensor far larger than cache. Here each image is processed start to finish while its working
set (84*84*3 floats = 85 KB) stays in L2, images run in parallel over cores, and the output
buffer is the scratch space (no allocation). Bounds are resolved per row, and each jitter op is
its own flat, branch-free loop, so the compiler vectorises them.
"""

from __future__ import annotations

from typing import Sequence

import numba
import numpy as np
import torch
from numba import prange
from torch import Tensor

from pipelines.augment import GRAY_WEIGHTS, LeeParams

_WR, _WG, _WB = (np.float32(v) for v in GRAY_WEIGHTS)
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)


@numba.njit(inline="always")
def _clamp01(v):  # type: ignore[no-untyped-def]
    return min(max(v, _ZERO), _ONE)


@numba.njit(inline="always")
def _gather(data, r, y0, x0, fl, o):  # type: ignore[no-untyped-def]
    """Crop (zero padding) + flip image ``r`` into ``o`` [H, W*C] as float in [0, 1].

    Bounds are resolved per row and per column range, so the inner loops are branch-free.
    """
    h, wc = o.shape
    c = data.shape[3]
    w = wc // c
    inv = np.float32(1.0 / 255.0)
    if fl:  # output column j reads source column x0 + w - 1 - j
        ja, jb = max(0, x0), min(w, w + x0)
    else:  # output column j reads source column x0 + j
        ja, jb = max(0, -x0), min(w, w - x0)
    for i in range(h):
        row = o[i]
        ys = y0 + i
        if ys < 0 or ys >= h:
            row[:] = _ZERO
            continue
        row[: ja * c] = _ZERO
        row[jb * c :] = _ZERO
        src = data[r, ys].reshape(wc)
        if not fl:  # a contiguous run: one flat loop over slices (indices provably >= 0,
            # so numba drops its negative-index wraparound and the loop vectorises)
            n = (jb - ja) * c
            dst, sv = row[ja * c : ja * c + n], src[(x0 + ja) * c : (x0 + ja) * c + n]
            for k in range(n):
                dst[k] = np.float32(sv[k]) * inv
        else:  # flipped: output pixel q of the run reads source pixel n - 1 - q of its run
            n = jb - ja
            dst, sv = row[ja * c : jb * c], src[(x0 + w - jb) * c : (x0 + w - ja) * c]
            if c == 3:
                for q in range(n):
                    s0 = 3 * (n - 1 - q)
                    dst[3 * q] = np.float32(sv[s0]) * inv
                    dst[3 * q + 1] = np.float32(sv[s0 + 1]) * inv
                    dst[3 * q + 2] = np.float32(sv[s0 + 2]) * inv
            else:
                for q in range(n):
                    dst[q] = np.float32(sv[n - 1 - q]) * inv


@numba.njit(inline="always")
def _blend(o, f, t, sat, mt, st):  # type: ignore[no-untyped-def]
    """One jitter op over ``o`` [H, W*C] in place, then ``(x - mt) * st`` (tiled per channel).

    ``clamp(f x + (1-f) target)``: target 0 (brightness, ``t = 0``), the gray mean (contrast,
    ``t = (1-f) * mean``) or, when ``sat``, each pixel's gray value (saturation, C = 3).
    f = 1, t = 0 normalises alone. Fusing the normalisation into the last op saves a pass.
    """
    g1 = _ONE - f
    for i in range(o.shape[0]):
        row = o[i]
        if sat:
            for j in range(row.shape[0] // 3):
                tk = g1 * (_WR * row[3 * j] + _WG * row[3 * j + 1] + _WB * row[3 * j + 2])
                for ch in range(3):
                    k = 3 * j + ch
                    row[k] = (_clamp01(f * row[k] + tk) - mt[k]) * st[k]
        else:
            for k in range(row.shape[0]):
                row[k] = (_clamp01(f * row[k] + t) - mt[k]) * st[k]


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=True)
def _lee_kernel(data, rows, top, left, flip, factors, order, jitter, mean, inv_std, pad, out):  # type: ignore[no-untyped-def]
    n_out, h, w, c = out.shape
    wc = w * c
    # per-channel constants tiled along a row of W*C values, so every loop is a flat one
    mt, st, wt = np.empty(wc, np.float32), np.empty(wc, np.float32), np.empty(wc, np.float32)
    zt, ut = np.zeros(wc, np.float32), np.ones(wc, np.float32)
    lumas = np.array([_WR, _WG, _WB], np.float32)
    for k in range(wc):
        ch = k % c
        mt[k], st[k] = mean[ch], inv_std[ch]
        wt[k] = lumas[ch] if c == 3 else _ONE
    npx = np.float32(h * w)
    for b in prange(n_out):
        o = out[b].reshape(h, wc)
        _gather(data, rows[b], top[b] - pad, left[b] - pad, flip[b], o)
        if not jitter:
            _blend(o, _ONE, _ZERO, False, mt, st)
            continue
        for k in range(3):
            op = order[b, k]
            f = factors[b, op]
            sat = op == 2 and c == 3
            if op == 2 and c == 1:  # saturation of a one-channel image is the identity (torchvision)
                f = _ONE
            t = _ZERO
            if op == 1:
                acc = np.float32(0.0)
                for i in range(h):
                    for q in range(wc):
                        acc += o[i, q] * wt[q]
                t = (_ONE - f) * acc / npx
            last = k == 2
            _blend(o, f, t, sat, mt if last else zt, st if last else ut)


def augment_rows_numba(
    data: np.ndarray,
    rows: Tensor,
    params: LeeParams,
    mean: Sequence[float],
    std: Sequence[float],
    out: Tensor | None = None,
) -> Tensor:
    """Lee19 on ``data[rows]`` with ``params``, on the CPU cores; equals :func:`augment_rows`.

    Args:
        data: uint8 [N, H, W, C], C-contiguous numpy array (a loaded split or a memmap).
        rows: int64 [B] (CPU). params: CPU :class:`LeeParams` for B images.
        mean, std: per channel, 0..1 scale.
        out: optional float32 [B, H, W, C] buffer to write into.

    Returns:
        float32 [B, C, H, W] with channels_last strides (a view of the NHWC buffer).
    """
    n, h, w, c = data.shape
    b = rows.shape[0]
    if out is None:
        out = torch.empty((b, h, w, c), dtype=torch.float32)
    jitter = params.factors is not None and params.order is not None
    factors = params.factors.numpy() if jitter else np.ones((b, 3), np.float32)  # type: ignore[union-attr]
    order = params.order.numpy() if jitter else np.zeros((b, 3), np.int64)  # type: ignore[union-attr]
    _lee_kernel(
        data,
        rows.numpy(),
        params.top.numpy(),
        params.left.numpy(),
        params.flip.numpy(),
        np.ascontiguousarray(factors, dtype=np.float32),
        np.ascontiguousarray(order, dtype=np.int64),
        jitter,
        np.asarray(mean, dtype=np.float32),
        (1.0 / np.asarray(std, dtype=np.float32)).astype(np.float32),
        int(params.pad),
        out.numpy(),
    )
    return out.permute(0, 3, 1, 2)
