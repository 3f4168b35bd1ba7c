"""The Lee19 augmentation as one fused, numba-parallel CPU kernel (the torch back end's CPU path).

Same parameters and semantics as :mod:`pipelines.augment`; tested equal to it. Why a separate
kernel: on a CPU the torch path makes ~10 full passes over the batch in memory (gather, mask,
float, three blends each with a gray image and a mean, normalise). Here images run in parallel
over cores and each is read from its uint8 source at most twice: pass 1 (only with contrast
jitter) sums the gray values contrast's mean needs, applying the ops before it on the fly; pass
2 takes every output pixel through crop, all three ops and the normalisation in registers and
writes it once. All three ops share one branch-free form (:func:`_op`), so the per-image op order
costs nothing per pixel; padding pixels all map to one constant per image. Rows are resolved
per row into plain forward loops (a flipped row is first reversed as bytes), which LLVM
vectorises; a reversed interleaved loop it does not (measured 8x slower).
"""

from __future__ import annotations

import os
from typing import Sequence

import numba
import numpy as np
import torch
from numba import prange
from torch import Tensor

from fsmtl.pipelines.augment import GRAY_WEIGHTS, LeeParams
from fsmtl.pipelines.checks import PipelineInputError, check_augment_args



def _threading_layer_for_one_core() -> None:
    """On one usable core, prefer numba's OpenMP (then workqueue) threading layer to TBB: with TBB
    seeing one core, a parallel kernel launched from a non-main thread (the loader's) leaves the
    process hanging at exit in ``unload_tbb`` (numba#10556, oneTBB#2056; seen here under
    ``taskset -c 0``). With more cores, or NUMBA_THREADING_LAYER set, numba chooses as usual."""
    from fsmtl.core.device import usable_cores

    if "NUMBA_THREADING_LAYER" not in os.environ and usable_cores() <= 1:
        numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]


_threading_layer_for_one_core()

_WR, _WG, _WB = (np.float32(v) for v in GRAY_WEIGHTS)
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_INV255 = np.float32(1.0 / 255.0)
_KEEP = ((_ONE, _ONE, _ONE), (_ZERO, _ZERO, _ZERO))  # a normalisation that keeps values


@numba.njit(inline="always")
def _op(v0, v1, v2, p, k, wt, sat=True):  # type: ignore[no-untyped-def]
    """Jitter op ``k`` of ``p`` (3 x (f, a, t)) on one pixel: ``clamp(f v + a gray(v) + t)``.

    ``sat=False`` (a constant where inlined) skips the gray term, which only saturation has.

    Brightness is (f, 0, 0), contrast (f, 0, (1-f) mean), saturation (f, 1-f, 0) and the identity
    (1, 0, 0): torchvision's blends, each clamped to [0, 1].
    """
    f, a, t = p[k]
    g = a * (wt[0] * v0 + wt[1] * v1 + wt[2] * v2) + t if sat else t
    return min(max(f * v0 + g, _ZERO), _ONE), min(max(f * v1 + g, _ZERO), _ONE), min(max(f * v2 + g, _ZERO), _ONE)


@numba.njit(inline="always")
def _chain(v0, v1, v2, p, wt, sp):  # type: ignore[no-untyped-def]
    """The three ops; ``sp``: the saturation slot (3: none), a constant where inlined."""
    v0, v1, v2 = _op(v0, v1, v2, p, 0, wt, sp == 0)
    v0, v1, v2 = _op(v0, v1, v2, p, 1, wt, sp == 1)
    return _op(v0, v1, v2, p, 2, wt, sp == 2)


@numba.njit(inline="always")
def _load(src, q, c):  # type: ignore[no-untyped-def]
    """Pixel ``q`` of a flat uint8 row as floats in [0, 1]; the one channel repeated when C = 1.

    Unsigned indices: numba then emits no negative-index wraparound, which blocks vectorising.
    """
    k = np.uint64(c * q)
    if c == 3:
        return np.float32(src[k]) * _INV255, np.float32(src[k + 1]) * _INV255, np.float32(src[k + 2]) * _INV255
    v = np.float32(src[k]) * _INV255
    return v, v, v


@numba.njit(inline="always")
def _store(dst, q, v0, v1, v2, nrm, c):  # type: ignore[no-untyped-def]
    """Pixel ``q`` of a flat float row: ``v * (1/std) - mean/std`` per channel (``nrm``)."""
    k = np.uint64(c * q)
    dst[k] = v0 * nrm[0][0] - nrm[1][0]
    if c == 3:
        dst[k + 1] = v1 * nrm[0][1] - nrm[1][1]
        dst[k + 2] = v2 * nrm[0][2] - nrm[1][2]


@numba.njit(inline="always")
def _gray_sum(img, ya, yb, xa, xb, p, n_pre, wt, c):  # type: ignore[no-untyped-def]
    """Pass 1: sum of gray(the first ``n_pre`` ops of ``p`` (x)) over source pixels [ya, yb) x [xa, xb).

    Rows sum in float32 (vectorised), the total in float64 for the mean's accuracy.
    """
    tot = 0.0
    for y in range(ya, yb):
        src = img[y, c * xa : c * xb]
        acc = _ZERO
        for q in range(xb - xa):
            v0, v1, v2 = _load(src, q, c)
            if n_pre >= 1:
                v0, v1, v2 = _op(v0, v1, v2, p, 0, wt)
            if n_pre >= 2:
                v0, v1, v2 = _op(v0, v1, v2, p, 1, wt)
            acc += wt[0] * v0 + wt[1] * v1 + wt[2] * v2
        tot += acc
    return tot


@numba.njit(inline="always")
def _row_sp(src, dst, n, rev, p, wt, nrm, c, sp):  # type: ignore[no-untyped-def]
    for q in range(n):
        v0, v1, v2 = _load(src, q, c)
        if rev:
            v0, v2 = v2, v0
        v0, v1, v2 = _chain(v0, v1, v2, p, wt, sp)
        _store(dst, q, v0, v1, v2, nrm, c)


@numba.njit(inline="always")
def _row(src, dst, n, rev, p, wt, nrm, c, sp):  # type: ignore[no-untyped-def]
    """Pass 2 over ``n`` pixels of one row; ``rev``: ``src`` is byte-reversed (channels too).

    One loop per saturation slot ``sp``, so only saturation pays for a gray value (-20% work).
    """
    if sp == 0:
        _row_sp(src, dst, n, rev, p, wt, nrm, c, 0)
    elif sp == 1:
        _row_sp(src, dst, n, rev, p, wt, nrm, c, 1)
    elif sp == 2:
        _row_sp(src, dst, n, rev, p, wt, nrm, c, 2)
    else:
        _row_sp(src, dst, n, rev, p, wt, nrm, c, 3)


@numba.njit(inline="always")
def _fill(dst, ja, jb, pv, c):  # type: ignore[no-untyped-def]
    """Padding pixels [ja, jb) of a row: each maps to the image's one padding value ``pv``."""
    for j in range(ja, jb):
        _store(dst, j, pv[0], pv[1], pv[2], _KEEP, c)


@numba.njit(inline="always")
def _image(img, o, y0, x0, fl, p, wt, nrm, pv, sp, c):  # type: ignore[no-untyped-def]
    """Pass 2 of one image ``img`` [H, W*C] into ``o`` [H, W*C]."""
    h, w = img.shape[0], img.shape[1] // c
    xa, xb = max(0, x0), min(w, w + x0)  # the source columns inside the crop
    ja, jb = (w - xb + x0, w - xa + x0) if fl else (xa - x0, xb - x0)  # their output columns
    n = xb - xa
    tmp = np.empty(c * n, np.uint8)
    for i in range(h):
        dst, ys = o[i], y0 + i
        if ys < 0 or ys >= h:
            _fill(dst, 0, w, pv, c)
            continue
        _fill(dst, 0, ja, pv, c)
        _fill(dst, jb, w, pv, c)
        src = img[ys, c * xa : c * xb]
        if fl:  # reversing bytes reverses pixels and their channels; _row swaps channels back
            for k in range(c * n):
                tmp[k] = src[np.uint64(c * n - 1 - k)]
            src = tmp
        _row(src, dst[c * ja : c * jb], n, fl, p, wt, nrm, c, sp)


@numba.njit(inline="always")
def _plan(pa, fac, order, jitter, c):  # type: ignore[no-untyped-def]
    """Fill ``pa`` [3, 3] with (f, a, t) per op slot (see :func:`_op`); returns the slots of
    contrast and saturation (3: none). Contrast's t needs the mean, so the caller sets it."""
    pa[:, 0], pa[:, 1], pa[:, 2] = _ONE, _ZERO, _ZERO
    pos, sp = 3, 3
    for k in range(3 if jitter else 0):
        op = order[k]
        if op == 2 and c == 1:  # saturation of a one-channel image is the identity (torchvision)
            continue
        pa[k, 0] = fac[op]
        if op == 2:
            pa[k, 1], sp = _ONE - fac[op], k
        if op == 1:
            pos = k
    return pos, sp


@numba.njit(inline="always")
def _augment_one(img, o, y0, x0, fl, fac, order, jitter, ns, c):  # type: ignore[no-untyped-def]
    """Lee19 of ``img`` [H, W*C] into ``o`` [H, W*C]; ``ns`` [2, 3]: 1/std, mean/std."""
    h, w = img.shape[0], img.shape[1] // c
    # tuples, not arrays: values in registers, which provably don't alias the output
    wt = (_WR, _WG, _WB) if c == 3 else (_ONE, _ZERO, _ZERO)  # gray of one channel is itself
    nrm = ((ns[0, 0], ns[0, 1], ns[0, 2]), (ns[1, 0], ns[1, 1], ns[1, 2]))
    pa = np.empty((3, 3), np.float32)
    pos, sp = _plan(pa, fac, order, jitter, c)
    if pos < 3:  # the mean is over the whole crop: padding zeros stay 0 (through b, s) but count
        p = ((pa[0, 0], pa[0, 1], pa[0, 2]), (pa[1, 0], pa[1, 1], pa[1, 2]), (pa[2, 0], pa[2, 1], pa[2, 2]))
        s = _gray_sum(img, max(0, y0), min(h, h + y0), max(0, x0), min(w, w + x0), p, pos, wt, c)
        pa[pos, 2] = (_ONE - pa[pos, 0]) * np.float32(s / (h * w))
    p = ((pa[0, 0], pa[0, 1], pa[0, 2]), (pa[1, 0], pa[1, 1], pa[1, 2]), (pa[2, 0], pa[2, 1], pa[2, 2]))
    v0, v1, v2 = _chain(_ZERO, _ZERO, _ZERO, p, wt, sp)  # the padding value (contrast makes it > 0)
    pv = (v0 * nrm[0][0] - nrm[1][0], v1 * nrm[0][1] - nrm[1][1], v2 * nrm[0][2] - nrm[1][2])
    _image(img, o, y0, x0, fl, p, wt, nrm, pv, sp, c)


# the channel count as a literal, so the inlined loops index at constant strides
@numba.njit(nogil=True, cache=True, fastmath=True)
def _augment_c3(img, o, y0, x0, fl, fac, order, jitter, ns):  # type: ignore[no-untyped-def]
    _augment_one(img, o, y0, x0, fl, fac, order, jitter, ns, 3)


@numba.njit(nogil=True, cache=True, fastmath=True)
def _augment_c1(img, o, y0, x0, fl, fac, order, jitter, ns):  # type: ignore[no-untyped-def]
    _augment_one(img, o, y0, x0, fl, fac, order, jitter, ns, 1)


@numba.njit(parallel=True, nogil=True, cache=True)
def _lee_kernel(data, c, rows, top, left, flip, factors, order, jitter, mean, inv_std, pad, out):  # type: ignore[no-untyped-def]
    """``data`` uint8 [N, H, W*C] and ``out`` float32 [B, H, W*C]: flat rows, constant strides."""
    ns = np.zeros((2, 3), np.float32)
    ns[0, :c], ns[1, :c] = inv_std, mean * inv_std
    for b in prange(out.shape[0]):
        args = (data[rows[b]], out[b], top[b] - pad, left[b] - pad, flip[b], factors[b], order[b], jitter, ns)
        if c == 3:
            _augment_c3(*args)
        else:
            _augment_c1(*args)


def augment_rows_numba(
    data: np.ndarray,
    rows: Tensor,
    params: LeeParams,
    mean: Sequence[float],
    std: Sequence[float],
    out: Tensor | None = None,
    check: bool = True,
) -> Tensor:
    """Lee19 on ``data[rows]`` with ``params``, on the CPU cores; equals :func:`augment_rows`.

    Args:
        data: uint8 [N, H, W, C] numpy array, C = 1 or 3 (a loaded split or a memmap;
            C-contiguous, else each call copies it).
        rows: int64 [B] in [0, N) (CPU). params: CPU :class:`LeeParams` for B images, with
            ``0 <= pad < min(H, W)``.
        mean, std: C values each, finite, std > 0 (0..1 scale).
        out: optional float32 [B, H, W, C] C-contiguous CPU buffer to write into.
        check: check the arguments first (O(B); :mod:`pipelines.checks`). The compiled kernel
            trusts its inputs: a row out of range reads outside ``data`` (a segfault). The loader
            passes False: its plans are valid by construction.

    Returns:
        float32 [B, C, H, W] with channels_last strides (a view of the NHWC buffer).

    Raises:
        PipelineInputError: naming the argument and what was expected (with ``check``).
    """
    if check:
        check_augment_args("augment_rows_numba", data, rows, params, mean, std, numpy_data=True)
        _check_out(out, (rows.shape[0], *data.shape[1:]))
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


def _check_out(out: Tensor | None, shape: tuple[int, ...]) -> None:
    """``out``: None, or a float32 C-contiguous CPU tensor of ``shape`` (the kernel writes through
    its numpy view; a reshaped copy would be written and lost)."""
    ok = out is None or (
        isinstance(out, Tensor) and out.dtype == torch.float32 and tuple(out.shape) == shape
        and out.device.type == "cpu" and out.is_contiguous()
    )  # fmt: skip
    if not ok:
        got = f"{out.dtype} {tuple(out.shape)} on {out.device}" if isinstance(out, Tensor) else type(out).__name__
        raise PipelineInputError(f"augment_rows_numba out: expected a C-contiguous float32 CPU tensor {list(shape)}, got {got}")


def warm_up() -> float:
    """Compile (or load from numba's on-disk cache) every CPU kernel a training run calls: the Lee19
    kernel for 1 and 3 channels, with and without jitter, on writable and read-only (memory-mapped)
    images, and the episode samplers. The first call after an install compiles (about 30 s on a
    2-core CPU); later processes load the cache in well under a second. Returns the seconds taken.

    ``make install`` runs it (``fsmtl doctor --warm``), so that a first training run's first epoch
    does not wait on the compiler.
    """
    import time

    from fsmtl.pipelines.augment import draw_lee_params
    from fsmtl.pipelines.episodes import sample_episode_indices

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    offsets = torch.tensor([0, 4, 8], dtype=torch.int64)
    sample_episode_indices(offsets, 2, 2, 2, g)
    for c in (1, 3):
        data = np.zeros((8, 8, 8, c), dtype=np.uint8)
        frozen = data.copy()
        frozen.setflags(write=False)
        for images in (data, frozen):
            for jitter in (True, False):
                params = draw_lee_params(4, g, 2, jitter=jitter, flip=True)
                augment_rows_numba(images, torch.arange(4, dtype=torch.int64), params, [0.5] * c, [0.25] * c)
    return time.perf_counter() - t0
