"""Range checks the benchmarks apply to their parsed flags, after argparse's own: integers up to
int64, reals finite, and a batch that must fit in the device's memory. (Beside common.py's argparse
types, which check only the lower end.)"""

from __future__ import annotations

import argparse

from fsmtl.core.checks import INT64_MAX, SEED_MAX, check_int, check_real
from fsmtl.core.device import check_fits
from fsmtl.preprocess.config import MAX_SIZE as MAX_SIDE  # image sides, as fsmtl convert's --size
from fsmtl.preprocess.config import MAX_WORKERS  # threads or processes: past any CPU count


def check_flags(a: argparse.Namespace, ints: dict[str, int] = {}, reals: dict[str, tuple[float, bool]] = {},
                sides: tuple[str, ...] = ()) -> None:  # noqa: B006 - read only
    """``ints``: flag -> lowest value (highest int64; ``seed`` up to SEED_MAX, ``workers``/``threads``
    up to MAX_WORKERS); ``reals``: flag -> (lowest, whether open there), finite; ``sides``: image
    side flags (an int or a tuple of them) up to MAX_SIDE. Flags left at None are skipped."""
    for flag, lo in ints.items():
        value = getattr(a, flag.lstrip("-").replace("-", "_"))
        hi = SEED_MAX if flag == "--seed" else MAX_WORKERS if flag in ("--workers", "--threads") else INT64_MAX
        if value is not None:
            check_int(value, flag, lo, hi)
    for flag, (lo, lo_open) in reals.items():
        check_real(getattr(a, flag.lstrip("-").replace("-", "_")), flag, lo, lo_open=lo_open)
    for flag in sides:
        value = getattr(a, flag.lstrip("-").replace("-", "_"))
        for side in (value if isinstance(value, tuple) else () if value is None else (value,)):
            check_int(side, flag, 8, MAX_SIDE)


def check_batch_fits(flags: str, images: int, side: int, device: str, per_pixel: int = 3 * 4) -> None:
    """Refuse a batch of ``images`` float32 RGB images of ``side`` x ``side`` that the device cannot hold."""
    check_fits(flags, f"a batch's {images:,} float32 images of {side}x{side}x3", images * side * side * per_pixel, device)
