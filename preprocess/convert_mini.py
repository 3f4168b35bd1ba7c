"""mini-ImageNet (Ravi & Larochelle split, 64/16/20 classes) from either download format.

1. The learn2learn / MetaOptNet cache: ``mini-imagenet-cache-{train,validation,test}.pkl``, each
   a dict with ``image_data`` uint8 [N, 84, 84, 3] and ``class_dict`` {wnid: [row indices]}.
2. Raw JPEGs, resized to ``--size`` (84): Ravi's ``images/`` folder with the split CSVs
   (``filename,label``; the user's CSVs beside ``images/`` if present, else the shipped copies),
   or ImageNet-style ``<wnid>/*.JPEG`` folders. In the latter, a class folder of ILSVRC files
   (``<wnid>_<id>.JPEG``) gives the images the Ravi CSV names (the k-th by numeric id, the usual
   rebuild convention); any other folder contributes all its images.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from fsmtl.core.errors import FsmtlError
from fsmtl.preprocess.config import PreprocessConfig
from fsmtl.preprocess.imaging import IMAGE_SUFFIXES, copy_in_chunks, decode_image, parallel_fill, read_file
from fsmtl.preprocess.safe_pickle import get_key, load_pickle
from fsmtl.preprocess.shard_writer import ShardWriter
from fsmtl.preprocess.shards import SPLITS
from fsmtl.preprocess.splitlists import check_class_set, class_lists, ravi_csv

_CACHE_NAMES = {"train": ("train",), "val": ("validation", "val"), "test": ("test",)}
_CACHE_WHAT = "a mini-ImageNet cache: dict with 'image_data' uint8 [N,84,84,3] and 'class_dict'"
_RAVI_NAME = re.compile(r"^(n\d{8})(\d{8})\.\w+$")
_ILSVRC_NAME = re.compile(r"^(n\d{8})_(\d+)\.\w+$")
_WNID = re.compile(r"^n\d{8}$")
_LAYOUTS = (
    "(1) mini-imagenet-cache-{train,validation,test}.pkl (learn2learn / MetaOptNet); "
    "(2) Ravi's images/*.jpg with train.csv, val.csv, test.csv (the shipped CSVs if absent); "
    "(3) ImageNet-style <wnid>/*.JPEG class folders (e.g. n01532829/)"
)
_COPY_CHUNK = 2048


def _cache_files(src: Path) -> dict[str, Path] | None:
    """{split: pkl path} when ``src`` holds the cache pickles, else None."""
    if src.is_file() and src.suffix == ".pkl":
        src = src.parent
    found = {}
    for split, names in _CACHE_NAMES.items():
        for n in names:
            p = src / f"mini-imagenet-cache-{n}.pkl"
            if p.is_file():
                found[split] = p
                break
    return found or None


def _check_cache(obj: Any, path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(images uint8 [N,H,W,3], {wnid: int64 row indices}) of one cache pickle, checked."""
    images = get_key(obj, "image_data", str(path), "a mini-ImageNet cache dict")
    class_dict = get_key(obj, "class_dict", str(path), "a mini-ImageNet cache dict")
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[3] != 3
    ):
        got = (
            f"{images.dtype} {images.shape}"
            if isinstance(images, np.ndarray)
            else type(images).__name__
        )
        raise FsmtlError(f"{path}: expected 'image_data' uint8 [N, H, W, 3], got {got}")
    if not isinstance(class_dict, dict):
        raise FsmtlError(
            f"{path}: expected 'class_dict' a dict {{wnid: [indices]}}, got {type(class_dict).__name__}"
        )
    rows = {}
    for k, v in class_dict.items():
        wnid = k.decode("latin1") if isinstance(k, bytes) else str(k)
        try:
            idx = np.asarray(v, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError):
            raise FsmtlError(
                f"{path}: class_dict[{wnid!r}]: expected a list of row indices"
            ) from None
        if len(idx) == 0 or idx.min() < 0 or idx.max() >= len(images):
            raise FsmtlError(
                f"{path}: class_dict[{wnid!r}]: expected indices in [0, {len(images)}), got {len(idx)} indices"
            )
        rows[wnid] = idx
    used = (
        np.bincount(np.concatenate(list(rows.values())), minlength=len(images))
        if rows
        else np.zeros(0)
    )
    if np.any(used > 1):
        raise FsmtlError(
            f"{path}: class_dict lists image {int(np.argmax(used > 1))} under more than one class"
        )
    return images, rows


def _convert_cache(cfg: PreprocessConfig, w: ShardWriter, files: dict[str, Path]) -> list[Path]:
    lists = class_lists("mini-imagenet")
    for split in SPLITS:
        if split not in files:
            continue
        path = files[split]
        images, rows = _check_cache(load_pickle(path, _CACHE_WHAT), path)
        check_class_set(str(path), list(rows), lists[split], f"the mini-ImageNet {split} split")
        if cfg.size not in (None, images.shape[1]) or images.shape[1] != images.shape[2]:
            raise FsmtlError(
                f"{path}: images are {images.shape[1]}x{images.shape[2]}; expected square, --size {cfg.out_size}"
            )
        order = np.concatenate([rows[c] for c in lists[split]])
        labels = np.repeat(
            np.arange(len(lists[split]), dtype=np.int64), [len(rows[c]) for c in lists[split]]
        )
        out = w.alloc_images(split, len(order), images.shape[1:])
        copy_in_chunks(out, lambda a, b: images[order[a:b]], _COPY_CHUNK, f"mini-imagenet {split}", cfg.progress)
        del out, images
        w.finish_split(split, labels, lists[split])
    return [files[s] for s in SPLITS if s in files]


def _raw_layout(src: Path) -> str:
    """Which raw layout the folder ``src`` holds: "ravi" or "wnid".

    Ravi's: an ``images/`` folder, or Ravi-named images (``n0153282900000005.jpg``) directly in
    ``src``; ImageNet-style: sub-folders named by wnid (``n01532829``).

    Raises:
        FsmtlError: naming ``src``, what it holds and the three layouts accepted, for anything else.
    """
    entries = [p for p in src.iterdir() if not p.name.startswith(".")]
    if (src / "images").is_dir():
        return "ravi"
    if any(p.is_dir() and _WNID.match(p.name) for p in entries):
        return "wnid"
    if any(p.is_file() and _RAVI_NAME.match(p.name) for p in entries):
        return "ravi"
    folders = sorted(p.name for p in entries if p.is_dir())
    found = (f"{len(folders)} sub-folder(s) not named by wnid (e.g. {folders[0]!r})" if folders
             else f"{len(entries)} file(s) and no images/ folder" if entries else "nothing")  # fmt: skip
    raise FsmtlError(f"{src}: not a mini-ImageNet layout (found {found}); expected one of: {_LAYOUTS}")


def _raw_class_files(src: Path, layout: str, rows: list[dict[str, str]], name: str) -> dict[str, list[Path]]:
    """{wnid: image paths} of one split for the raw layouts (Ravi ``images/`` or wnid folders)."""
    if layout == "wnid":
        return _wnid_folder_files(src, rows, name)
    images_dir = src / "images" if (src / "images").is_dir() else src
    by_class: dict[str, list[Path]] = {}
    for r in rows:
        p = images_dir / r["filename"]
        if not p.is_file():
            raise FsmtlError(f"{p}: missing; expected the image {name} lists for {r['label']}")
        by_class.setdefault(r["label"], []).append(p)
    return by_class


def _wnid_folder_files(src: Path, rows: list[dict[str, str]], name: str) -> dict[str, list[Path]]:
    wanted: dict[str, list[int]] = {}
    for r in rows:
        m = _RAVI_NAME.match(r["filename"])
        wanted.setdefault(r["label"], []).append(int(m.group(2)) if m else -1)
    out = {}
    for wnid, indices in wanted.items():
        d = src / wnid
        if not d.is_dir():
            raise FsmtlError(f"{d}: missing; expected the class folder of {wnid} ({name})")
        files = [p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        out[wnid] = select_ravi_images(files, indices, d)
    return out


def select_ravi_images(files: list[Path], indices: list[int], folder: Path) -> list[Path]:
    """The images of one class folder that the Ravi CSV names.

    ILSVRC-named files (``<wnid>_<id>.JPEG``) are sorted by numeric id and the CSV's 1-based
    indices pick among them; a folder with other names contributes all its files, sorted.
    """
    if files and all(_ILSVRC_NAME.match(p.name) for p in files) and min(indices) > 0:
        ranked = sorted(files, key=lambda p: int(_ILSVRC_NAME.match(p.name).group(2)))  # type: ignore[union-attr]
        if max(indices) > len(ranked):
            raise FsmtlError(
                f"{folder}: expected at least {max(indices)} ILSVRC images, found {len(ranked)}"
            )
        return [ranked[i - 1] for i in indices]
    if not files:
        raise FsmtlError(f"{folder}: expected images, found none")
    return sorted(files)


def _convert_raw(cfg: PreprocessConfig, w: ShardWriter, src: Path) -> list[Path]:
    lists = class_lists("mini-imagenet")
    size = cfg.out_size
    layout = _raw_layout(src)
    for split in SPLITS:
        name, rows = ravi_csv(split, src)
        if not rows:
            raise FsmtlError(f"{name}: expected filename,label rows, found none")
        check_class_set(
            name, [r["label"] for r in rows], lists[split], f"the mini-ImageNet {split} split"
        )
        by_class = _raw_class_files(src, layout, rows, name)
        paths = [p for c in lists[split] for p in by_class[c]]
        labels = np.repeat(
            np.arange(len(lists[split]), dtype=np.int64), [len(by_class[c]) for c in lists[split]]
        )
        out = w.alloc_images(split, len(paths), (size, size, 3))
        parallel_fill(
            out,
            lambda i: decode_image(read_file(paths[i]), str(paths[i]), size=size),
            cfg.workers,
            f"mini-imagenet {split}",
            cfg.progress,
        )
        out.flush()
        del out
        w.finish_split(split, labels, lists[split])
    return [src]


def convert_mini_imagenet(cfg: PreprocessConfig, w: ShardWriter) -> list[Path]:
    """Write mini-ImageNet from the cache pickles or raw JPEGs in ``cfg.src``; return sources."""
    assert cfg.src is not None
    src = Path(cfg.src)
    if not src.exists():
        raise FsmtlError(f"{src}: not found; expected one of: {_LAYOUTS}")
    files = _cache_files(src)
    if files is not None:
        return _convert_cache(cfg, w, files)
    if not src.is_dir():
        raise FsmtlError(f"{src}: not a mini-ImageNet layout (a file); expected one of: {_LAYOUTS}")
    return _convert_raw(cfg, w, src)
