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
_INV255 = np.float32(1.0 / 255.0)
_ONE_NRM = ((_ONE, _ONE, _ONE), (_ZERO, _ZERO, _ZERO))  # normalisation that keeps a value


@numba.njit(inline="always")
def _op(v0, v1, v2, p, k, wt):  # type: ignore[no-untyped-def]
    """Jitter op ``k`` of ``p`` [3, 3] on one pixel: ``clamp(f v + a gray(v) + t)``.

    One branch-free form for the three ops, so a pixel's chain has no per-op branches:
    brightness (a = t = 0), contrast (a = 0, t = (1-f) mean), saturation (a = 1-f, t = 0);
    f = 1, a = t = 0 is the identity.
    """
    f, a, t = p[k]
    g = a * (wt[0] * v0 + wt[1] * v1 + wt[2] * v2) + t
    return min(max(f * v0 + g, _ZERO), _ONE), min(max(f * v1 + g, _ZERO), _ONE), min(max(f * v2 + g, _ZERO), _ONE)


@numba.njit(inline="always")
def _load(src, x, c):  # type: ignore[no-untyped-def]
    """Pixel ``x`` of a flat uint8 row as floats in [0, 1]; one channel repeated when C = 1.

    Unsigned indices: numba then skips its negative-index wraparound, whose per-access select
    would keep the loops from vectorising.
    """
    k = np.uint64(c * x)
    if c == 3:
        return np.float32(src[k]) * _INV255, np.float32(src[k + 1]) * _INV255, np.float32(src[k + 2]) * _INV255
    v = np.float32(src[k]) * _INV255
    return v, v, v


@numba.njit(inline="always")
def _gray_sum(img, ya, yb, xa, xb, p, n_pre, wt, c):  # type: ignore[no-untyped-def]
    """Sum of gray(ops 0..n_pre-1 of p (x)) over source pixels [ya, yb) x [xa, xb) (float64).

    Rows accumulate in float32 (vectorisable) and are summed in float64 for the mean's accuracy.
    """
    tot = 0.0
    for y in range(ya, yb):
        src = img[y]
        acc = _ZERO
        for x in range(xa, xb):
            v0, v1, v2 = _load(src, x, c)
            if n_pre >= 1:
                v0, v1, v2 = _op(v0, v1, v2, p, 0, wt)
            if n_pre >= 2:
                v0, v1, v2 = _op(v0, v1, v2, p, 1, wt)
            acc += wt[0] * v0 + wt[1] * v1 + wt[2] * v2
        tot += acc
    return tot


@numba.njit(inline="always")
def _store(dst, j, v0, v1, v2, nrm, c):  # type: ignore[no-untyped-def]
    """Normalise one pixel, ``v * (1/std) - mean/std`` per channel, into a flat output row."""
    k = np.uint64(c * j)  # unsigned: see _load
    dst[k] = v0 * nrm[0][0] - nrm[1][0]
    if c == 3:
        dst[k + 1] = v1 * nrm[0][1] - nrm[1][1]
        dst[k + 2] = v2 * nrm[0][2] - nrm[1][2]


@numba.njit(inline="always")
def _chain_row(src, dst, ja, jb, sx0, fl, p, wt, nrm, c):  # type: ignore[no-untyped-def]
    """Output pixels [ja, jb) of one row: load (flipped or not), three ops, normalise, store.

    Two loops rather than a signed step, so each reads its source at a constant stride.
    """
    if fl:  # output column j reads source column sx0 - j
        for j in range(ja, jb):
            v0, v1, v2 = _load(src, sx0 - j, c)
            v0, v1, v2 = _op(v0, v1, v2, p, 0, wt)
            v0, v1, v2 = _op(v0, v1, v2, p, 1, wt)
            v0, v1, v2 = _op(v0, v1, v2, p, 2, wt)
            _store(dst, j, v0, v1, v2, nrm, c)
    else:  # output column j reads source column sx0 + j
        for j in range(ja, jb):
            v0, v1, v2 = _load(src, sx0 + j, c)
            v0, v1, v2 = _op(v0, v1, v2, p, 0, wt)
            v0, v1, v2 = _op(v0, v1, v2, p, 1, wt)
            v0, v1, v2 = _op(v0, v1, v2, p, 2, wt)
            _store(dst, j, v0, v1, v2, nrm, c)


@numba.njit(inline="always")
def _fill(dst, ja, jb, pv, c):  # type: ignore[no-untyped-def]
    """Padding pixels [ja, jb): every one maps to the same normalised value ``pv``."""
    for j in range(ja, jb):
        _store(dst, j, pv[0], pv[1], pv[2], _ONE_NRM, c)


@numba.njit(inline="always")
def _image(img, o, y0, x0, fl, p, wt, nrm, pv, c):  # type: ignore[no-untyped-def]
    """Pass 2 of one image into ``o`` [H, W*C]: padding rows/columns filled, the rest chained."""
    h, w = img.shape[0], img.shape[1] // c
    # the output columns whose source column is inside the image (same range when flipped)
    ja, jb = (max(0, x0), min(w, w + x0)) if fl else (max(0, -x0), min(w, w - x0))
    sx0 = x0 + w - 1 if fl else x0
    for i in range(h):
        dst = o[i]
        ys = y0 + i
        if ys < 0 or ys >= h:
            _fill(dst, 0, w, pv, c)
            continue
        _fill(dst, 0, ja, pv, c)
        _fill(dst, jb, w, pv, c)
        _chain_row(img[ys], dst, ja, jb, sx0, fl, p, wt, nrm, c)


@numba.njit(inline="always")
def _plan(p, fac, order, jitter, c):  # type: ignore[no-untyped-def]
    """Fill ``p`` [3, 3] with (f, a, t) per op slot; returns the contrast slot (3: none).

    Contrast's ``t`` needs the mean, so it is set later (see :func:`_op`).
    """
    p[:, 0], p[:, 1], p[:, 2] = _ONE, _ZERO, _ZERO
    pos = 3
    if not jitter:
        return pos
    for k in range(3):
        op = order[k]
        if op == 2 and c == 1:  # saturation of a one-channel image is the identity (torchvision)
            continue
        p[k, 0] = fac[op]
        if op == 2:
            p[k, 1] = _ONE - fac[op]
        if op == 1:
            pos = k
    return pos


@numba.njit(inline="always")
def _augment_one(img, o, y0, x0, fl, fac, order, jitter, ns, c):  # type: ignore[no-untyped-def]
    """Lee19 of one image ``img`` [H, W, C] into ``o`` [H, W*C]: two passes over the source.

    ``ns`` [2, 3]: 1/std and mean/std per channel (zeros past C).
    """
    h, w = img.shape[0], img.shape[1] // c
    # tuples, not arrays: values kept in registers, which provably don't alias the output
    wt = (_WR, _WG, _WB) if c == 3 else (_ONE, _ZERO, _ZERO)
    nrm = ((ns[0, 0], ns[0, 1], ns[0, 2]), (ns[1, 0], ns[1, 1], ns[1, 2]))
    pa = np.empty((3, 3), np.float32)
    pos = _plan(pa, fac, order, jitter, c)
    if pos < 3:  # contrast's mean over the whole crop: padding zeros stay 0 but count
        pre = ((pa[0, 0], pa[0, 1], pa[0, 2]), (pa[1, 0], pa[1, 1], pa[1, 2]), (pa[2, 0], pa[2, 1], pa[2, 2]))
        s = _gray_sum(img, max(0, y0), min(h, h + y0), max(0, x0), min(w, w + x0), pre, pos, wt, c)
        pa[pos, 2] = (_ONE - pa[pos, 0]) * np.float32(s / (h * w))
    p = ((pa[0, 0], pa[0, 1], pa[0, 2]), (pa[1, 0], pa[1, 1], pa[1, 2]), (pa[2, 0], pa[2, 1], pa[2, 2]))
    v0, v1, v2 = _op(_ZERO, _ZERO, _ZERO, p, 0, wt)
    v0, v1, v2 = _op(v0, v1, v2, p, 1, wt)
    v0, v1, v2 = _op(v0, v1, v2, p, 2, wt)
    pv = (v0 * nrm[0][0] - nrm[1][0], v1 * nrm[0][1] - nrm[1][1], v2 * nrm[0][2] - nrm[1][2])
    _image(img, o, y0, x0, fl, p, wt, nrm, pv, c)


# the channel count as a literal, so the inlined loops index at constant strides
@numba.njit(nogil=True, cache=True, fastmath=True)
def _augment_c3(img, o, y0, x0, fl, fac, order, jitter, ns):  # type: ignore[no-untyped-def]
    _augment_one(img, o, y0, x0, fl, fac, order, jitter, ns, 3)


@numba.njit(nogil=True, cache=True, fastmath=True)
def _augment_c1(img, o, y0, x0, fl, fac, order, jitter, ns):  # type: ignore[no-untyped-def]
    _augment_one(img, o, y0, x0, fl, fac, order, jitter, ns, 1)


@numba.njit(parallel=True, nogil=True, cache=True, fastmath=True)
def _lee_kernel(data, c, rows, top, left, flip, factors, order, jitter, mean, inv_std, pad, out):  # type: ignore[no-untyped-def]
    """``data`` uint8 [N, H, W*C] and ``out`` float32 [B, H, W*C]: flat rows, constant strides."""
    n_out = out.shape[0]
    ns = np.zeros((2, 3), np.float32)  # v * (1/std) - mean/std per channel
    ns[0, :c], ns[1, :c] = inv_std, mean * inv_std
    for b in prange(n_out):
        args = (data[rows[b]], out[b], top[b] - pad, left[b] - pad, flip[b])
        if c == 3:
            _augment_c3(*args, factors[b], order[b], jitter, ns)
        else:
            _augment_c1(*args, factors[b], order[b], jitter, ns)


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
        data.reshape(n, h, w * c),
        c,
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
        out.numpy().reshape(b, h, w * c),
    )
    return out.permute(0, 3, 1, 2)
