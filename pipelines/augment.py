"""Lee19 (MetaOptNet) augmentation, batched: random crop with zero padding, colour jitter, flip.

The seed applies, per PIL image, ``RandomCrop(size, padding=p)``, ``ColorJitter(0.4, 0.4, 0.4)``,
``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize(mean, std)``. Here the random parameters of
a whole batch are drawn at once (:func:`draw_lee_params`, on a CPU ``torch.Generator``) and applied
by pure tensor functions (:func:`apply_lee`, :func:`augment_rows`), on any device.

Semantics follow torchvision's functional ops on float images in [0, 1]:

- crop: pad by ``p`` zeros on every side, take the ``H x W`` window at (top, left), both uniform
  in ``0..2p``. Done as one gather with clamped indices and a validity mask (no padded copy).
- jitter: brightness ``clamp(f x)``, contrast ``clamp(f x + (1-f) mean(gray(x)))``, saturation
  ``clamp(f x + (1-f) gray(x))``, gray = 0.2989 R + 0.587 G + 0.114 B; factors uniform in
  [1-s, 1+s]; the three ops in a random order per image (torchvision permutes them per call).
  Each step is one fused blend whose target is selected per image by masks, so the six orders
  cost the same as one.
- flip: the jitter is equivariant to a horizontal flip (per-pixel ops and a global mean), so the
  flip is folded into the crop's column indices instead of being a separate pass.
"""

from __future__ import annotations

import math

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fsmtl.pipelines.checks import (
    PipelineInputError,
    check_augment_args,
    check_images,
    check_int,
    check_lee_params,
    check_mean_std,
    check_out_dtype,
    check_strength,
)
from fsmtl.pipelines.transforms import normalize_nhwc

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2


class LeeParams(NamedTuple):
    """Random parameters for a batch of ``B`` images (all CPU or all on one device).

    Attributes:
        top, left: int64 [B] in [0, 2*pad]: the crop window's corner in the padded image.
        flip: bool [B]: flip horizontally.
        factors: float32 [B, 3] (brightness, contrast, saturation) in [1-s, 1+s], or None
            (no colour jitter).
        order: int64 [B, 3]: a permutation of (0, 1, 2) per image, the order the jitter ops run.
        pad: zero padding on each side.
    """

    top: Tensor
    left: Tensor
    flip: Tensor
    factors: Tensor | None
    order: Tensor | None
    pad: int

    def to(self, device: torch.device | str) -> "LeeParams":
        """The same parameters on ``device`` (non-blocking where the source is pinned)."""

        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return LeeParams(mv(self.top), mv(self.left), mv(self.flip), mv(self.factors), mv(self.order), self.pad)  # type: ignore[arg-type]


def default_padding(image_size: int) -> int:
    """The seed's padding: 8 pixels at 84x84 (>= 64 px), 4 at 32x32 (below)."""
    return 8 if image_size >= 64 else 4


def draw_lee_params(
    n: int,
    generator: torch.Generator,
    pad: int,
    jitter: bool = True,
    flip: bool = True,
    strength: float = 0.4,
) -> LeeParams:
    """Draw the Lee19 parameters of ``n`` images on the generator's device (CPU).

    Args:
        n: number of images.
        generator: a CPU ``torch.Generator``; the result depends only on its state.
        pad: crop padding; offsets are uniform in ``0..2*pad``.
        jitter: draw colour-jitter factors and orders (else ``factors``/``order`` are None).
        flip: draw flips with probability 0.5 (else never flip).
        strength: jitter strength ``s`` in [0, 1]; factors are uniform in ``[1-s, 1+s]``.

    Raises:
        PipelineInputError: ``n`` or ``pad`` not an int >= 0, ``strength`` outside [0, 1], or
            ``generator`` not a CPU ``torch.Generator``.
    """
    check_int(n, "draw_lee_params n", 0)
    check_int(pad, "draw_lee_params pad", 0)
    check_strength(strength, "draw_lee_params strength")
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise PipelineInputError(f"draw_lee_params generator: expected a CPU torch.Generator, got {generator!r}")
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    if not flip:
        flips = torch.zeros(n, dtype=torch.bool)
    if not jitter:
        return LeeParams(top, left, flips, None, None, pad)
    u = torch.rand(n, 3, generator=generator)
    factors = (1.0 - strength) + 2.0 * strength * u
    order = torch.rand(n, 3, generator=generator).argsort(dim=1)  # uniform over the 6 orders
    return LeeParams(top, left, flips, factors, order, pad)


def draw_affine(n: int, generator: torch.Generator, degrees: float, scale: float, shear: float) -> Tensor:
    """Draw ``n`` random affine warps (rotation, isotropic scale, shear about the image centre), as
    ``torch.nn.functional.affine_grid`` matrices float32 [n, 2, 3] (output -> input coordinates).

    Args:
        degrees: rotations uniform in [-degrees, degrees].
        scale: magnifications uniform in [1 - scale, 1 + scale] (0 <= scale < 1).
        shear: horizontal shear angles uniform in [-shear, shear] degrees (< 90).

    Three uniform draws per image (rotation, scale, shear) in that order, always, so that a setting
    of 0 keeps the stream of the others.
    """
    check_int(n, "draw_affine n", 0)
    u = torch.rand(n, 3, generator=generator) * 2.0 - 1.0
    angle = u[:, 0] * math.radians(degrees)
    mag = 1.0 + u[:, 1] * scale
    sh = torch.tan(u[:, 2] * math.radians(shear))
    cos, sin = torch.cos(angle), torch.sin(angle)
    # inverse of (rotate . shear . scale): sample the input where the warped output pixel came from
    a = torch.stack([torch.stack([cos, -sin + cos * sh], 1), torch.stack([sin, cos + sin * sh], 1)], 1)  # [n,2,2]
    inv = torch.linalg.inv(a * mag[:, None, None])
    return torch.cat([inv, torch.zeros(n, 2, 1)], dim=2).float()


# the warp settings and their exclusive upper bounds (all >= 0; 0 = off), checked by both the
# pipeline's and the training run's configs
WARP_LIMITS: tuple[tuple[str, float], ...] = (
    ("affine_degrees", 180.0), ("affine_scale", 1.0), ("affine_shear", 90.0), ("elastic_px", 8.0),
)

# control points of an elastic displacement field: a 4 x 4 grid over the image (every ~10 px at
# 32 px), so the field bends whole strokes smoothly instead of jittering pixels
ELASTIC_GRID = 4


def draw_elastic(n: int, generator: torch.Generator, px: float) -> Tensor:
    """Draw ``n`` smooth random displacement fields: float32 [n, 2, ELASTIC_GRID, ELASTIC_GRID],
    the (x, y) shift in pixels at each control point, normal with standard deviation ``px``.

    :func:`warp_batch` interpolates them bicubically over the image and adds them to the affine
    warp's sampling grid (an elastic distortion in the manner of Simard et al. 2003, which moves a
    drawing's strokes as another hand would draw them). One normal draw per number, always.
    """
    check_int(n, "draw_elastic n", 0)
    return torch.randn(n, 2, ELASTIC_GRID, ELASTIC_GRID, generator=generator) * float(px)


def elastic_grid_shift(elastic: Tensor, height: int, width: int) -> Tensor:
    """The sampling-grid shift float32 [B, H, W, 2] (grid_sample's normalised coordinates) of
    displacement fields float [B, 2, g, g] in pixels (:func:`draw_elastic`), bicubic between the
    control points (which sit on the image's corners and edges)."""
    dense = F.interpolate(elastic.float(), size=(height, width), mode="bicubic", align_corners=True)
    # Python scalars, not a tensor of scales: no host-to-device copy per batch on CUDA
    return torch.stack([dense[:, 0] * (2.0 / width), dense[:, 1] * (2.0 / height)], dim=-1)


def warp_batch(x: Tensor, theta: Tensor, elastic: Tensor | None = None) -> Tensor:
    """Warp a normalised batch: float [B, C, H, W] (any memory format) by ``theta`` [B, 2, 3]
    (:func:`draw_affine`), then displace by ``elastic`` float [B, 2, g, g] pixels (:func:`draw_elastic`;
    None: none), bilinear, edges extended (the border is background in Omniglot-like data and keeps
    the normalised background value); same dtype and memory format out."""
    th = theta.to(x.device, torch.float32, non_blocking=True)
    grid = F.affine_grid(th, list(x.shape), align_corners=False)
    if elastic is not None:
        grid = grid + elastic_grid_shift(elastic.to(x.device, non_blocking=True), x.shape[2], x.shape[3])
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out.to(x.dtype)


def crop_flip_gather(data: Tensor, rows: Tensor, params: LeeParams) -> Tensor:
    """Gather ``data[rows]``, cropped with zero padding and flipped, in one indexing op.

    Args:
        data: uint8 [N, H, W, C] (a whole split, or a batch with ``rows = arange(B)``).
        rows: int64 [B] on ``data``'s device.
        params: on ``data``'s device.

    Returns:
        uint8 [B, H, W, C]: ``crop(pad(data[rows]), top, left)``, flipped where ``params.flip``.
    """
    _, h, w, _ = data.shape
    dev = data.device
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    ys = params.top.unsqueeze(1) - params.pad + ar_h  # [B, H] source row of each output row
    cols = torch.where(params.flip.unsqueeze(1), (w - 1) - ar_w, ar_w)
    xs = params.left.unsqueeze(1) - params.pad + cols  # [B, W]
    valid = ((ys >= 0) & (ys < h)).unsqueeze(2) & ((xs >= 0) & (xs < w)).unsqueeze(1)  # [B,H,W]
    out = data[rows[:, None, None], ys.clamp(0, h - 1)[:, :, None], xs.clamp(0, w - 1)[:, None, :]]
    return out.masked_fill_(~valid.unsqueeze(3), 0)


def grayscale(x: Tensor) -> Tensor:
    """float [B, H, W, 3] -> float [B, H, W, 1] with torchvision's luma weights."""
    wts = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype).to(x.device, non_blocking=True)  # no stream sync
    return (x * wts).sum(dim=3, keepdim=True)


def color_jitter(x: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """Brightness, contrast and saturation in a per-image order, torchvision semantics.

    Args:
        x: float32 [B, H, W, C] in [0, 1] (C = 1 or 3; saturation is the identity for C = 1,
            as in torchvision).
        factors: float32 [B, 3] (brightness, contrast, saturation).
        order: int64 [B, 3], a permutation of (0, 1, 2) per image.

    Returns:
        float32 [B, H, W, C] in [0, 1].
    """
    b = x.shape[0]
    for k in range(3):
        op = order[:, k]
        f = factors.gather(1, op.unsqueeze(1)).view(b, 1, 1, 1)
        gray = grayscale(x) if x.shape[3] == 3 else x
        is_con = (op == CONTRAST).view(b, 1, 1, 1)
        is_sat = (op == SATURATION).view(b, 1, 1, 1)
        if x.shape[3] == 1:
            f = torch.where(is_sat, torch.ones_like(f), f)
        mean = gray.mean(dim=(1, 2, 3), keepdim=True)
        # the blend target: 0 for brightness, the gray mean for contrast, gray for saturation
        target = torch.where(is_sat, gray, mean * is_con)
        x = (f * x + (1.0 - f) * target).clamp_(0.0, 1.0)
    return x


def jitter_slots(params: LeeParams, channels: int) -> tuple[Tensor, Tensor]:
    """The colour jitter as three op slots per image, for fused kernels (CPU, vectorised).

    Slot ``k`` maps a pixel ``v`` to ``clamp(f v + a gray(v) + t)``: brightness is ``(f, 0)``,
    saturation ``(f, 1 - f)``, contrast ``(f, 0)`` with ``t = (1 - f) mean(gray)`` of the image as
    it enters that slot (the kernel computes it), the identity ``(1, 0)``; ``t`` is 0 elsewhere.
    Saturation of a one-channel image is the identity, as in torchvision.

    Args:
        params: :class:`LeeParams` for B images (``factors``/``order`` None: no jitter).
        channels: 1 or 3.

    Returns:
        coef float32 [B, 3, 2]: (f, a) per slot in the order the ops run; and the contrast slot
        int64 [B] in 0..2 (3: no contrast).
    """
    b = params.top.shape[0]
    coef = torch.zeros(b, 3, 2)
    coef[:, :, 0] = 1.0
    if params.factors is None or params.order is None:
        return coef, torch.full((b,), 3, dtype=torch.int64)
    f = params.factors.gather(1, params.order).float()  # [B, 3]: each slot's factor
    is_sat = params.order == SATURATION
    if channels == 1:
        f = torch.where(is_sat, torch.ones_like(f), f)
    coef[:, :, 0] = f
    coef[:, :, 1] = torch.where(is_sat, 1.0 - f, torch.zeros_like(f))
    slot = (params.order == CONTRAST).to(torch.int64).argmax(dim=1)
    return coef, slot


def augment_rows(
    data: Tensor,
    rows: Tensor,
    params: LeeParams,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
    check: bool = True,
) -> Tensor:
    """Gather ``data[rows]`` and apply Lee19 with ``params``; the fused training-batch path.

    Args:
        data: uint8 [N, H, W, C] on the target device.
        rows: int64 [B] in [0, N), params: :class:`LeeParams` for B images, both on ``data``'s device.
        mean, std: C values each, finite, std > 0 (0..1 scale).
        dtype: torch.float32, float16 or bfloat16.
        check: check the arguments first (:mod:`pipelines.checks`; values only where on the CPU,
            so no wait for the device). The loader passes False: its plans are valid by construction.

    Returns:
        ``dtype`` [B, C, H, W] normalised (channels_last strides unless ``channels_last=False``).

    Raises:
        PipelineInputError: naming the argument and what was expected (with ``check``).
    """
    if check:
        check_augment_args("augment_rows", data, rows, params, mean, std)
        check_out_dtype(dtype, "augment_rows dtype")
    x = crop_flip_gather(data, rows, params).to(torch.float32).mul_(1.0 / 255.0)
    if params.factors is not None and params.order is not None:
        x = color_jitter(x, params.factors, params.order)
    return normalize_nhwc(x, mean, std, dtype, channels_last)


def apply_lee(
    images: Tensor,
    params: LeeParams,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
) -> Tensor:
    """Apply Lee19 with ``params`` to a batch: uint8 [B, H, W, C] -> ``dtype`` [B, C, H, W].

    Args:
        images: uint8 [B, H, W, C] torch tensor (0..255; C = 1 or 3), on any device.
        params: :class:`LeeParams` for B images (CPU, or on ``images``' device).
        mean, std: C values each, finite, std > 0 (0..1 scale).
        dtype: torch.float32, float16 or bfloat16.

    Raises:
        PipelineInputError: naming the argument and what was expected, e.g. float or NCHW images,
            a numpy array, or params for another number of images.
    """
    b, h, w, c = check_images(images, "apply_lee images")
    plan_device = params.top.device if isinstance(getattr(params, "top", None), Tensor) else images.device
    if plan_device not in (images.device, torch.device("cpu")):
        raise PipelineInputError(f"apply_lee params: expected tensors on the CPU or {images.device}, got {plan_device}")
    check_lee_params(params, b, h, w, plan_device, "apply_lee")  # values checked where on the CPU
    check_mean_std(mean, std, c, "apply_lee")
    check_out_dtype(dtype, "apply_lee dtype")
    rows = torch.arange(b, device=images.device)
    return augment_rows(images, rows, params.to(images.device), mean, std, dtype, channels_last, check=False)
