"""CIFAR-FS and FC100 from CIFAR-100's python version (``cifar-100-python/`` or its .tar.gz).

Both benchmarks pool CIFAR-100's train and test images (500 + 100 per class) and split the 100
fine classes: CIFAR-FS 64/16/20 (Bertinetto et al.), FC100 by superclass 12/4/4, i.e. 60/20/20
fine classes (Oreshkin et al.). The conversion is a vectorised reshape of the raw rows (3072
bytes each: the R, G, B planes of a 32x32 image), with no per-image Python loop.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from fsmtl.core.errors import FsmtlError
from fsmtl.preprocess.config import PreprocessConfig
from fsmtl.preprocess.imaging import copy_in_chunks
from fsmtl.preprocess.safe_pickle import get_key, load_pickle, load_pickle_stream
from fsmtl.preprocess.shard_writer import ShardWriter
from fsmtl.preprocess.shards import SPLITS
from fsmtl.preprocess.splitlists import cifar100_names, class_lists

_ROW = 3 * 32 * 32
_N_FINE = 100
_COPY_CHUNK = 8192
_BATCH_WHAT = "a CIFAR-100 batch: dict with 'data' uint8 [N, 3072] and 'fine_labels' [N]"
_MEMBERS = ("train", "test", "meta")


def _find_source(src: Path) -> Path:
    """The ``cifar-100-python`` folder or archive that ``src`` names or holds."""
    if src.is_file():
        return src
    if not src.is_dir():
        raise FsmtlError(f"{src}: not found; expected cifar-100-python/ or cifar-100-python.tar.gz")
    if (src / "train").is_file():
        return src
    for cand in ("cifar-100-python", "cifar-100-python.tar.gz", "cifar-100-python.tgz"):
        if (src / cand).exists():
            return _find_source(src / cand)
    raise FsmtlError(
        f"{src}: expected a cifar-100-python/ folder (files train, test, meta) or cifar-100-python.tar.gz"
    )


def _read_tar(path: Path) -> dict[str, Any]:
    found: dict[str, Any] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                base = m.name.rsplit("/", 1)[-1]
                if m.isfile() and base in _MEMBERS and base not in found:
                    f = tar.extractfile(m)
                    assert f is not None
                    found[base] = load_pickle_stream(f, f"{path}:{m.name}", _BATCH_WHAT)
    except (tarfile.TarError, EOFError, OSError) as e:
        why = "no gzip, bzip2, xz or plain tar format fits" if isinstance(e, tarfile.ReadError) else str(e).splitlines()[0]
        raise FsmtlError(f"{path}: not a readable tar archive ({why}); expected cifar-100-python.tar.gz") from None
    return found


def _read_source(src: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """{member: unpickled object} for train/test(/meta), and the name used for each in errors."""
    if src.is_file():
        objs = _read_tar(src)
        names = {k: f"{src}:cifar-100-python/{k}" for k in _MEMBERS}
    else:
        names = {k: str(src / k) for k in _MEMBERS}
        objs = {
            k: load_pickle(src / k, _BATCH_WHAT)
            for k in _MEMBERS
            if k != "meta" or (src / k).exists()
        }
    for k in ("train", "test"):
        if k not in objs:
            raise FsmtlError(f"{names[k]}: missing; expected the CIFAR-100 {k} batch")
    return objs, names


def _batch_arrays(obj: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(data uint8 [N, 3072], fine labels int64 [N]) of one batch, checked."""
    data = get_key(obj, "data", name, "a CIFAR-100 batch dict")
    fine = get_key(obj, "fine_labels", name, "a CIFAR-100 batch dict")
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != _ROW
    ):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise FsmtlError(f"{name}: expected 'data' uint8 [N, {_ROW}], got {got}")
    try:
        labels = np.asarray(fine, dtype=np.int64)
    except (TypeError, ValueError):
        raise FsmtlError(
            f"{name}: expected 'fine_labels' integers, got {type(fine).__name__}"
        ) from None
    if labels.shape != (len(data),):
        raise FsmtlError(f"{name}: expected {len(data)} fine_labels, got shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= _N_FINE):
        raise FsmtlError(
            f"{name}: expected fine_labels in [0, {_N_FINE}), got [{labels.min()}, {labels.max()}]"
        )
    return data, labels


def _check_meta(obj: Any, name: str, fine_names: list[str]) -> None:
    names = get_key(obj, "fine_label_names", name, "CIFAR-100 meta")
    got = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]
    if got != fine_names:
        raise FsmtlError(
            f"{name}: expected the 100 CIFAR-100 fine label names in index order, got a different list"
        )


def _split_classes(benchmark: str) -> tuple[dict[str, list[str]], dict[str, list[str]] | None]:
    """{split: fine names} and, for FC100, {split: superclass of each fine class}."""
    if benchmark == "cifar-fs":
        return class_lists("cifar-fs"), None
    fine, coarse, fine_to_coarse = cifar100_names()
    lists = class_lists("fc100", "_fine")
    cats = {s: [coarse[fine_to_coarse[fine.index(c)]] for c in lists[s]] for s in SPLITS}
    return lists, cats


def convert_cifar(cfg: PreprocessConfig, w: ShardWriter) -> list[Path]:
    """Write the cifar-fs or fc100 splits of CIFAR-100 (32x32x3); return the source files read."""
    if cfg.size not in (None, 32):
        raise FsmtlError(f"--size: CIFAR images are 32x32 and are not resized, got {cfg.size}")
    assert cfg.src is not None
    src = _find_source(Path(cfg.src))
    objs, names = _read_source(src)
    fine_names, _, _ = cifar100_names()
    if "meta" in objs:
        _check_meta(objs["meta"], names["meta"], fine_names)
    parts = [_batch_arrays(objs[k], names[k]) for k in ("train", "test")]
    del objs
    data = np.concatenate([p[0] for p in parts])
    fine = np.concatenate([p[1] for p in parts])
    del parts
    counts = np.bincount(fine, minlength=_N_FINE)
    if np.any(counts == 0):
        missing = [fine_names[i] for i in np.flatnonzero(counts == 0)][:4]
        raise FsmtlError(
            f"{src}: expected images of all {_N_FINE} CIFAR-100 fine classes; none for {missing}"
        )
    lists, cats = _split_classes(cfg.benchmark)
    index = {n: i for i, n in enumerate(fine_names)}
    for split in SPLITS:
        lut = np.full(_N_FINE, -1, dtype=np.int64)
        lut[[index[c] for c in lists[split]]] = np.arange(len(lists[split]))
        lab = lut[fine]
        sel = np.flatnonzero(lab >= 0)
        order = sel[np.argsort(lab[sel], kind="stable")]
        out = w.alloc_images(split, len(order), (32, 32, 3))
        # CIFAR rows are channel-major 3x32x32: one reshape + transpose per chunk gives HWC
        copy_in_chunks(out, lambda a, b: data[order[a:b]].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1),
                       _COPY_CHUNK, f"{cfg.benchmark} {split}", cfg.progress)  # fmt: skip
        del out
        w.finish_split(split, lab[order], lists[split], cats[split] if cats else None)
    return [src]
