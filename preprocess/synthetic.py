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

from dataclasses import dataclass

import numpy as np

from preprocess.shards import SPLITS

_CHUNK = 256


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
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.classes) != 3 or any(c < 0 for c in self.classes):
            raise ValueError(f"classes must be three counts (train, val, test), got {self.classes}")
        if self.per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {self.per_class}")


def _class_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw one class's pattern parameters."""
    return {
        "freq": rng.uniform(1.5, 6.0, size=2),  # cycles per image, for the two gratings
        "theta": rng.uniform(0, np.pi, size=2),
        "colour": rng.uniform(0.0, 1.0, size=(2, 3)),
        "blob_colour": rng.uniform(0.0, 1.0, size=3),
        "blob_centre": rng.uniform(0.25, 0.75, size=2),
        "blob_radius": rng.uniform(0.12, 0.3, size=1),
        "mix": rng.uniform(0.3, 0.7, size=1),
    }


def render_class(
    params: dict[str, np.ndarray], n: int, size: int, rng: np.random.Generator, difficulty: float
) -> np.ndarray:
    """Render ``n`` random variations of one class.

    Returns:
        float32 [n, size, size, 3] in [0, 1].
    """
    d = difficulty
    yy, xx = np.meshgrid(
        np.linspace(0, 1, size, dtype=np.float32),
        np.linspace(0, 1, size, dtype=np.float32),
        indexing="ij",
    )
    out = np.empty((n, size, size, 3), dtype=np.float32)
    for k in range(2):
        fx = params["freq"][k] * np.cos(params["theta"][k])
        fy = params["freq"][k] * np.sin(params["theta"][k])
        # per-image orientation/frequency jitter and random phase (translation)
        jit = 1.0 + d * rng.normal(0, 0.08, size=(n, 1, 1)).astype(np.float32)
        phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1)).astype(np.float32)
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * jit * (fx * xx + fy * yy)[None] + phase)
        contrib = wave[..., None] * params["colour"][k].astype(np.float32)
        if k == 0:
            out[:] = contrib * params["mix"][0]
        else:
            out += contrib * (1 - params["mix"][0])
    # the blob, moved by a random translation
    centre = params["blob_centre"][None] + d * rng.normal(0, 0.08, size=(n, 2))
    radius = params["blob_radius"][0] * (1 + d * rng.normal(0, 0.1, size=n))
    dist2 = (yy[None] - centre[:, 0, None, None].astype(np.float32)) ** 2 + (
        xx[None] - centre[:, 1, None, None].astype(np.float32)
    ) ** 2
    mask = (dist2 < (radius[:, None, None] ** 2).astype(np.float32)).astype(np.float32)[..., None]
    out = out * (1 - mask) + mask * params["blob_colour"].astype(np.float32)
    # nuisances: contrast, brightness, background tint, occluder, noise
    contrast = (1 + d * rng.uniform(-0.35, 0.35, size=(n, 1, 1, 1))).astype(np.float32)
    bright = (d * rng.uniform(-0.15, 0.15, size=(n, 1, 1, 1))).astype(np.float32)
    tint = (d * rng.uniform(-0.1, 0.1, size=(n, 1, 1, 3))).astype(np.float32)
    out = (out - 0.5) * contrast + 0.5 + bright + tint
    if d > 0:
        side = max(2, int(size * 0.3))
        oy = rng.integers(0, size - side + 1, size=n)
        ox = rng.integers(0, size - side + 1, size=n)
        grey = rng.uniform(0, 1, size=n).astype(np.float32)
        for i in range(n):
            out[i, oy[i] : oy[i] + side, ox[i] : ox[i] + side] = grey[i]
        out += rng.normal(0, 0.06 * d, size=out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0, out=out)


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
