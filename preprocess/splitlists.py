"""The standard class splits shipped inside the package (``preprocess/splits/``, see its README).

Every function returns fresh lists, read from the package data: no module-level caches.
"""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path
from typing import Sequence

from fsmtl.core.errors import FsmtlError

from fsmtl.preprocess.shards import SPLITS


def _read_text(*parts: str) -> str:
    res = resources.files("preprocess").joinpath("splits", *parts)
    try:
        return res.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FsmtlError(
            f"preprocess/splits/{'/'.join(parts)}: shipped split file missing " "(reinstall fsmtl)"
        ) from None


def read_lines(*parts: str) -> list[str]:
    """Non-empty lines of a shipped split file, e.g. ``read_lines("cifar-fs", "train.txt")``."""
    return [ln.strip() for ln in _read_text(*parts).splitlines() if ln.strip()]


def class_lists(benchmark: str, suffix: str = "") -> dict[str, list[str]]:
    """{split: class identifiers} for a benchmark folder (``cifar-fs``, ``fc100``, ...).

    Args:
        suffix: file-name suffix, e.g. ``"_fine"`` for FC100's fine classes.
    """
    return {s: read_lines(benchmark, f"{s}{suffix}.txt") for s in SPLITS}


def cifar100_names() -> tuple[list[str], list[str], list[int]]:
    """CIFAR-100 fine names, coarse names (index order) and the coarse index of each fine class."""
    fine = read_lines("cifar100_fine_labels.txt")
    coarse = read_lines("cifar100_coarse_labels.txt")
    rows = list(csv.DictReader(_read_text("cifar100_fine_to_coarse.csv").splitlines()))
    fine_to_coarse = [0] * len(fine)
    for r in rows:
        fine_to_coarse[int(r["fine_index"])] = int(r["coarse_index"])
    return fine, coarse, fine_to_coarse


def tiered_categories() -> dict[str, str]:
    """{class wnid: category wnid} over all tiered-ImageNet splits."""
    out: dict[str, str] = {}
    for s in SPLITS:
        for r in csv.DictReader(
            _read_text("tiered-imagenet", f"{s}_class_category.csv").splitlines()
        ):
            out[r["class_wnid"]] = r["category_wnid"]
    return out


def read_csv_rows(text: str, name: str, columns: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV with a header naming ``columns`` (errors name ``name``)."""
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise FsmtlError(
            f"{name}: expected a CSV header with {list(columns)}, got {reader.fieldnames}"
        )
    return list(reader)


def ravi_csv(split: str, src_dir: Path | None = None) -> tuple[str, list[dict[str, str]]]:
    """The Ravi & Larochelle per-image list of a mini-ImageNet split (``filename,label`` rows).

    Uses ``<src_dir>/<split>.csv`` when the user's folder has one (Ravi's own download does),
    otherwise the shipped copy. Returns (name of the file used, rows).
    """
    if src_dir is not None and (src_dir / f"{split}.csv").is_file():
        p = src_dir / f"{split}.csv"
        return str(p), read_csv_rows(p.read_text(encoding="utf-8"), str(p), ("filename", "label"))
    name = f"preprocess/splits/mini-imagenet/ravi_csv/{split}.csv"
    text = _read_text("mini-imagenet", "ravi_csv", f"{split}.csv")
    return name, read_csv_rows(text, name, ("filename", "label"))


def check_class_set(name: str, found: Sequence[str], expected: Sequence[str], what: str) -> None:
    """Raise a one-line error when ``found`` misses or adds classes against a split list."""
    f, e = set(found), set(expected)
    if f == e:
        return
    missing, extra = sorted(e - f), sorted(f - e)
    parts = []
    if missing:
        parts.append(
            f"missing {len(missing)} ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})"
        )
    if extra:
        parts.append(
            f"extra {len(extra)} ({', '.join(extra[:4])}{', ...' if len(extra) > 4 else ''})"
        )
    raise FsmtlError(f"{name}: expected the {len(e)} classes of {what}; {'; '.join(parts)}")
