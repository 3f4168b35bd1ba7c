"""A procedurally generated few-shot data set: the embedded default for the demo and the tests.

Each class is a distinct generative pattern: two oriented colour gratings and a coloured blob,
all with class-specific frequencies, orientations, colours and blob placement. Each image is a
random variation of its class: random translation (grating phase and blob position), contrast
and brightness jitter, a random background tint, a random occluding patch and pixel noise. Classes
are therefore learnable (a small convnet separates them) but not trivial (no single pixel, mean
colour or frequency identifies a class, and variations overlap between neighbouring classes).

Everything is deterministic for a seed: class c of split s always gets the same pattern, and
image i of that class the same variation, whatever the other sizes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fsmtl.preprocess.shards import SPLITS

_CHUNK = 256
MIN_IMAGE_SIZE = 8  # the smallest side the generator renders; fsmtl convert's --size lower bound


@dataclass(frozen=True)
class SyntheticConfig:
    """Shape of the generated set (defaults: the shape of mini-ImageNet)."""

    image_size: int = 84
    channels: int = 3
    classes: tuple[int, int, int] = (64, 16, 20)  # train, val, test
    per_class: int = 600
    seed: int = 0
    difficulty: float = 1.0  # scales the nuisance variation; 0 = clean prototypes

    def __post_init__(self) -> None:
        if self.image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.classes) != 3 or any(c < 0 for c in self.classes):
            raise ValueError(f"classes must be three counts (train, val, test), got {self.classes}")
        if self.per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {self.per_class}")


_PARTS = 3  # elliptical parts per class "glyph"


def _class_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw one class's pattern: the layout, sizes and textures of its parts.

    The class palette is only a weak cue: each image's colours are drawn around it with a wide
    spread, so neither mean colour nor raw pixels identify a class; the spatial structure does.
    """
    return {
        "pos": rng.uniform(-0.22, 0.22, size=(_PARTS, 2)),  # part centres, relative to the glyph
        "radii": rng.uniform(0.07, 0.2, size=(_PARTS, 2)),  # ellipse half-axes
        "angle": rng.uniform(0, np.pi, size=_PARTS),  # ellipse orientation
        "tex_freq": rng.uniform(2.0, 9.0, size=_PARTS),  # cycles per image inside each part
        "tex_theta": rng.uniform(0, np.pi, size=_PARTS),
        "palette": rng.uniform(0, 1, size=(2, 3)),  # a weak colour cue: per-image colours vary around it
    }


def _rotate(u: np.ndarray, v: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(theta), np.sin(theta)
    return c * u + s * v, -s * u + c * v


def render_class(
    params: dict[str, np.ndarray], n: int, size: int, rng: np.random.Generator, difficulty: float
) -> np.ndarray:
    """Render ``n`` random variations of one class.

    A class is a glyph of textured elliptical parts. Each image moves, scales and rotates the
    glyph, paints it in two random colours on a random background with a faint random grating,
    occludes a random patch and adds pixel noise (all scaled by ``difficulty``).

    Returns:
        float32 [n, size, size, 3] in [0, 1].
    """
    d = np.float32(difficulty)
    lin = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    yy, xx = np.meshgrid(lin, lin, indexing="ij")
    col = lambda *shape: rng.uniform(0, 1, size=shape).astype(np.float32)  # noqa: E731
    shift = (d * rng.uniform(-0.1, 0.1, size=(n, 2))).astype(np.float32)
    scale = (1 + d * rng.uniform(-0.15, 0.15, size=n)).astype(np.float32)
    rot = (d * rng.uniform(-0.25, 0.25, size=n)).astype(np.float32)
    # image coordinates -> glyph coordinates, per image
    u0 = (xx[None] - shift[:, 0, None, None]) / scale[:, None, None]
    v0 = (yy[None] - shift[:, 1, None, None]) / scale[:, None, None]
    u, v = _rotate(u0, v0, rot[:, None, None])
    spread = np.float32(0.35) * d
    pal = params["palette"].astype(np.float32)
    fg_a = np.clip(pal[0] + spread * (2 * col(n, 1, 1, 3) - 1), 0, 1)
    fg_b = np.clip(pal[1] + spread * (2 * col(n, 1, 1, 3) - 1), 0, 1)
    bg = col(n, 1, 1, 3)
    # faint background grating in a random orientation: texture that carries no class
    bth = rng.uniform(0, np.pi, size=(n, 1, 1)).astype(np.float32)
    bfr = rng.uniform(2, 9, size=(n, 1, 1)).astype(np.float32)
    bwave = np.sin(2 * np.pi * bfr * (np.cos(bth) * xx + np.sin(bth) * yy) + col(n, 1, 1) * 6.28)
    out = bg + (0.08 * d * bwave)[..., None]
    for k in range(_PARTS):
        pu, pv = _rotate(u - params["pos"][k, 0], v - params["pos"][k, 1], params["angle"][k])
        r = (pu / params["radii"][k, 0]) ** 2 + (pv / params["radii"][k, 1]) ** 2
        mask = np.clip((1.0 - r) * 6.0, 0.0, 1.0)[..., None]  # soft-edged ellipse
        phase = (d * col(n, 1, 1)) * 6.28
        th = params["tex_theta"][k]
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * params["tex_freq"][k] * (np.cos(th) * u + np.sin(th) * v) + phase)
        paint = fg_a * wave[..., None] + fg_b * (1 - wave[..., None])
        out = out * (1 - mask) + paint * mask
    if d > 0:
        side = max(2, int(size * 0.25))
        oy = rng.integers(0, size - side + 1, size=n)
        ox = rng.integers(0, size - side + 1, size=n)
        grey = col(n)
        for i in range(n):
            out[i, oy[i] : oy[i] + side, ox[i] : ox[i] + side] = grey[i]
        out += rng.normal(0, 0.05 * d, size=out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def generate_class(cfg: SyntheticConfig, split: str, k: int) -> np.ndarray:
    """Generate the images of class ``k`` of ``split``.

    Returns:
        uint8 [per_class, S, S, C].
    """
    s_idx = SPLITS.index(split)
    size, c = cfg.image_size, cfg.channels
    images = np.empty((cfg.per_class, size, size, c), dtype=np.uint8)
    params = _class_params(np.random.default_rng([cfg.seed, s_idx, k, 0]))
    for start in range(0, cfg.per_class, _CHUNK):
        m = min(_CHUNK, cfg.per_class - start)
        var_rng = np.random.default_rng([cfg.seed, s_idx, k, 1, start])
        img = render_class(params, m, size, var_rng, cfg.difficulty)
        if c == 1:
            img = img.mean(-1, keepdims=True)
        images[start : start + m] = np.round(img * 255.0).astype(np.uint8)
    return images


def class_names(cfg: SyntheticConfig, split: str) -> list[str]:
    """Identifiers of the classes of ``split``."""
    return [f"synthetic-{split}-{k:04d}" for k in range(cfg.classes[SPLITS.index(split)])]


def generate_split(cfg: SyntheticConfig, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Generate one split.

    Returns:
        images uint8 [n_classes * per_class, S, S, C], labels int64 sorted, class identifiers.
    """
    n_classes = cfg.classes[SPLITS.index(split)]
    images = np.empty(
        (n_classes * cfg.per_class, cfg.image_size, cfg.image_size, cfg.channels), dtype=np.uint8
    )
    labels = np.repeat(np.arange(n_classes, dtype=np.int64), cfg.per_class)
    for k in range(n_classes):
        images[k * cfg.per_class : (k + 1) * cfg.per_class] = generate_class(cfg, split, k)
    return images, labels, class_names(cfg, split)


def write_synthetic_shards(out: str | os.PathLike[str], cfg: SyntheticConfig, force: bool = False) -> Path:
    """Generate all three splits and write them as a shard set at ``out`` (in memory: small sets).

    For tests, benchmarks and checks; ``fsmtl convert synthetic`` streams large sets instead.
    """
    from fsmtl.preprocess.shard_writer import ShardWriter

    with ShardWriter(Path(out), "synthetic", force=force) as w:
        for split in SPLITS:
            if cfg.classes[SPLITS.index(split)] == 0:
                continue
            images, labels, classes = generate_split(cfg, split)
            w.write_split(split, images, labels, classes)
        return w.commit()
