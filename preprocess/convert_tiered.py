"""tiered-ImageNet (Ren et al. 2018; 351/97/160 classes in 20/6/8 categories).

Input: the format of Ren et al. used by MetaOptNet, RFS and learn2learn, per split:
``{split}_images_png.pkl`` (a list of PNG-encoded images, each ``bytes`` or a 1-D uint8 array)
and ``{split}_labels.pkl`` (a dict with ``label_specific`` [N] indexing ``label_specific_str``
(class wnids) and ``label_general`` [N] indexing ``label_general_str`` (category wnids)).
PNGs are decoded in parallel straight into the shard; classes.json keeps each class's category.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fsmtl.core.errors import FsmtlError
from fsmtl.preprocess.config import PreprocessConfig
from fsmtl.preprocess.imaging import decode_image, parallel_fill
from fsmtl.preprocess.safe_pickle import get_key, load_pickle
from fsmtl.preprocess.shard_writer import ShardWriter
from fsmtl.preprocess.shards import SPLITS
from fsmtl.preprocess.splitlists import check_class_set, class_lists

_NATIVE = 84
_LABELS_WHAT = "a tiered-ImageNet labels dict with label_specific, label_general, label_specific_str, label_general_str"


def _strings(v: Any, name: str, key: str) -> list[str]:
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if not isinstance(v, (list, tuple)):
        raise FsmtlError(f"{name}: expected {key!r} a list of strings, got {type(v).__name__}")
    return [x.decode("latin1") if isinstance(x, bytes) else str(x) for x in v]


def _indices(v: Any, name: str, key: str, n: int, bound: int) -> np.ndarray:
    try:
        a = np.asarray(v, dtype=np.int64)
    except (TypeError, ValueError):
        raise FsmtlError(f"{name}: expected {key!r} integers") from None
    if a.shape != (n,):
        raise FsmtlError(f"{name}: expected {key!r} of shape ({n},) (one per image), got {a.shape}")
    if n and (a.min() < 0 or a.max() >= bound):
        raise FsmtlError(f"{name}: expected {key!r} in [0, {bound}), got [{a.min()}, {a.max()}]")
    return a


def read_labels(path: Path, n_images: int) -> tuple[np.ndarray, list[str], dict[str, str]]:
    """(class index per image int64 [N], class wnids, {class wnid: category}) of a labels pkl."""
    obj = load_pickle(path, _LABELS_WHAT)
    name = str(path)
    specific_str = _strings(
        get_key(obj, "label_specific_str", name, _LABELS_WHAT), name, "label_specific_str"
    )
    general_str = _strings(
        get_key(obj, "label_general_str", name, _LABELS_WHAT), name, "label_general_str"
    )
    specific = _indices(
        get_key(obj, "label_specific", name, _LABELS_WHAT),
        name,
        "label_specific",
        n_images,
        len(specific_str),
    )
    general = _indices(
        get_key(obj, "label_general", name, _LABELS_WHAT),
        name,
        "label_general",
        n_images,
        len(general_str),
    )
    category: dict[str, str] = {}
    first = np.unique(specific, return_index=True)
    for cls, row in zip(*first):
        category[specific_str[cls]] = general_str[general[row]]
    return specific, specific_str, category


def _images(path: Path) -> list[Any]:
    obj = load_pickle(path, "a list of PNG-encoded images")
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        obj = list(obj)
    if not isinstance(obj, (list, tuple)):
        raise FsmtlError(f"{path}: expected a list of PNG-encoded images, got {type(obj).__name__}")
    for i, x in enumerate(obj[:1]):
        if not isinstance(x, (bytes, np.ndarray)):
            raise FsmtlError(f"{path}: item {i}: expected PNG bytes, got {type(x).__name__}")
    return list(obj)


def _split_files(src: Path, split: str) -> tuple[Path, Path] | None:
    imgs, labs = src / f"{split}_images_png.pkl", src / f"{split}_labels.pkl"
    if not imgs.is_file() and not labs.is_file():
        return None
    for p in (imgs, labs):
        if not p.is_file():
            raise FsmtlError(f"{p}: missing; expected it beside {imgs if p is labs else labs}")
    return imgs, labs


def convert_tiered_imagenet(cfg: PreprocessConfig, w: ShardWriter) -> list[Path]:
    """Write the tiered-ImageNet splits found in ``cfg.src``; return the source files read."""
    assert cfg.src is not None
    src = Path(cfg.src)
    if not src.is_dir():
        raise FsmtlError(
            f"{src}: expected a folder with {{train,val,test}}_images_png.pkl and _labels.pkl"
        )
    lists = class_lists("tiered-imagenet")
    sources: list[Path] = []
    size = cfg.out_size
    for split in SPLITS:
        files = _split_files(src, split)
        if files is None:
            continue
        img_path, lab_path = files
        pngs = _images(img_path)
        specific, names, category = read_labels(lab_path, len(pngs))
        present = [names[i] for i in np.unique(specific)]
        check_class_set(str(lab_path), present, lists[split], f"the tiered-ImageNet {split} split")
        lut = np.full(len(names), -1, dtype=np.int64)
        lut[[names.index(c) for c in lists[split]]] = np.arange(len(lists[split]))
        lab = lut[specific]
        order = np.argsort(lab, kind="stable")
        out = w.alloc_images(split, len(order), (size, size, 3))
        # wrong-sized PNGs are an error unless the user asked for a size (then they are resized)
        strict = None if cfg.size is not None else _NATIVE

        def load(i: int) -> np.ndarray:
            j = int(order[i])
            return decode_image(pngs[j], f"{img_path}[{j}]", size=size, expect_size=strict)

        parallel_fill(out, load, cfg.workers, f"tiered-imagenet {split}", cfg.progress)
        out.flush()
        del out, pngs
        w.finish_split(split, lab[order], lists[split], [category[c] for c in lists[split]])
        sources += [img_path, lab_path]
    if not sources:
        raise FsmtlError(
            f"{src}: expected {{train,val,test}}_images_png.pkl with {{split}}_labels.pkl, found none"
        )
    return sources
