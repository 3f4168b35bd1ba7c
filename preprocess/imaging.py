"""Decoding and resizing images, one at a time or in parallel straight into a shard memmap."""

from __future__ import annotations

import contextlib
import io
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from fsmtl.core.device import cpu_workers
from fsmtl.core.errors import FsmtlError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_CHUNK = 128  # images per parallel task: large enough to amortise scheduling, small for progress


def read_file(path: Path) -> bytes:
    """The bytes of an input file; an unreadable file is a one-line error naming it."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise FsmtlError(f"{path}: cannot read ({e.strerror})") from None


def to_8bit_opaque(img: Image.Image) -> Image.Image:
    """16-bit and float greyscale scaled (not clipped) to 8 bits; transparency composited onto white.

    PIL's own ``convert`` clips 16-bit values at 255 (a 16-bit image turns almost all white) and
    drops alpha (a black glyph on a transparent background turns all black).
    """
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max(initial=0)
        if img.mode.startswith("I;16") or (img.mode == "I" and top > 255):
            arr = arr / 257.0  # 16-bit 0..65535 -> 0..255 (PIL reports no bit depth for "I": by value)
        elif img.mode == "F" and top <= 1.0:
            arr = arr * 255.0  # float images in [0, 1]
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:  # alpha, or a tRNS colour key
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img


def decode_image(
    data: bytes | np.ndarray,
    name: str,
    size: int | None = None,
    channels: int = 3,
    invert: bool = False,
    expect_size: int | None = None,
    exif: bool = False,
) -> np.ndarray:
    """Decode one encoded image (PNG, JPEG, ...) to a uint8 array.

    Args:
        data: the encoded file's bytes (or a 1-D uint8 array holding them).
        name: how to name the image in errors.
        size: resize to ``size`` x ``size`` (Lanczos) when the decoded size differs; None keeps it.
        channels: 3 (RGB) or 1 (grey).
        invert: return 255 - pixels (Omniglot: ink becomes the bright foreground).
        expect_size: if set, an image that is not ``expect_size`` square is an error.
        exif: apply the EXIF orientation tag (for users' own photos; the benchmark converters keep
            pixels as stored, as the published splits were made).

    Returns:
        uint8 [H, W, channels].
    """
    if isinstance(data, np.ndarray):
        data = data.tobytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            if exif:
                img = ImageOps.exif_transpose(img)  # phone photos: upright as they are shown
            img = to_8bit_opaque(img).convert("RGB" if channels == 3 else "L")
    except UnidentifiedImageError:
        raise FsmtlError(f"{name}: not a readable image (unknown or corrupt image format)") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt input
        raise FsmtlError(f"{name}: not a readable image ({type(e).__name__}: {e})") from None
    if expect_size is not None and img.size != (expect_size, expect_size):
        raise FsmtlError(
            f"{name}: expected a {expect_size}x{expect_size} image, got {img.size[0]}x{img.size[1]}"
        )
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    arr = np.asarray(img, dtype=np.uint8)
    if invert:
        arr = 255 - arr
    return arr.reshape(arr.shape[0], arr.shape[1], channels)


@contextlib.contextmanager
def cancelling_pool(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A thread pool that, when its block raises (an error, Ctrl-C, SIGTERM), drops the queued work
    and waits only for what is already running (a plain ``with`` would finish every queued task)."""
    pool = ThreadPoolExecutor(workers)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def parallel_fill(
    out: np.ndarray,
    load: Callable[[int], np.ndarray],
    workers: int | None,
    desc: str,
    progress: bool = True,
) -> None:
    """Fill ``out[i] = load(i)`` for every row, on a thread pool, with a progress bar.

    Args:
        out: uint8 [N, H, W, C], typically a writable memmap from ``ShardWriter.alloc_images``.
        load: returns row ``i`` as uint8 [H, W, C]; may raise FsmtlError for a bad input.

    The first error cancels the remaining work and is re-raised.
    """
    n = len(out)
    expected = tuple(out.shape[1:])

    def fill(start: int, stop: int) -> int:
        for i in range(start, stop):
            img = load(i)
            if img.shape != expected:
                raise FsmtlError(f"{desc} image {i}: expected shape {expected}, got {img.shape}")
            out[i] = img
        return stop - start

    with (
        cancelling_pool(cpu_workers(workers)) as pool,
        tqdm(total=n, desc=desc, unit="img", disable=None if progress else True, leave=False) as bar,
    ):
        pending = {pool.submit(fill, s, min(s + _CHUNK, n)) for s in range(0, n, _CHUNK)}
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for f in done:
                if f.exception() is not None:
                    raise f.exception()  # type: ignore[misc]
                bar.update(f.result())


def copy_in_chunks(
    out: np.ndarray,
    rows: Callable[[int, int], np.ndarray],
    chunk: int,
    desc: str,
    progress: bool = True,
) -> None:
    """Fill ``out[a:b] = rows(a, b)`` chunk by chunk, with a progress bar; then flush ``out``.

    For sources already decoded in memory (cache pickles, CIFAR rows): bounded temporaries,
    one vectorised copy per chunk.

    Args:
        out: uint8 [N, H, W, C], typically a writable memmap from ``ShardWriter.alloc_images``.
        rows: returns output rows ``a:b`` as uint8 [b - a, H, W, C].
    """
    n = len(out)
    for a in tqdm(range(0, n, chunk), desc=desc, unit="chunk", disable=None if progress else True, leave=False):
        b = min(a + chunk, n)
        out[a:b] = rows(a, b)
    if hasattr(out, "flush"):
        out.flush()
