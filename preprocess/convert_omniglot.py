"""Omniglot (Lake et al.) from the official zips or their unzipped folders.

``--src`` is a zip, an ``images_background*`` / ``images_evaluation*`` folder, or a folder
holding any of these (zips or folders; the ``_small1``/``_small2`` subsets too). Layout inside:
``<Alphabet>/<character>/*.png``. Background alphabets form the train split (``--val-alphabets N``
holds out the last N, in sorted order, as val), evaluation alphabets the test split; either set
may be absent; a drawing present in several sources (the ``_small1``/``_small2`` subsets
overlap) is kept once. Ink becomes the bright foreground (pixels inverted), images are resized to
``--size`` (32), ``--rotations`` adds the 90/180/270-degree rotations of every train class as
new classes (``<Alphabet>/<character>/rot90`` ...), and ``--mirrors`` its left-right mirror image
(``<Alphabet>/<character>/mirror``; with rotations, the eight symmetries of the square).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from fsmtl.core.device import cpu_workers
from fsmtl.core.errors import FsmtlError
from fsmtl.preprocess.class_copies import MIRROR, QUARTER_TURNS, with_class_copies
from fsmtl.preprocess.config import PreprocessConfig
from fsmtl.preprocess.imaging import cancelling_pool, decode_image, parallel_fill, read_file
from fsmtl.preprocess.shard_writer import ShardWriter

DEFAULT_MIRRORS = False  # --mirrors: left-right mirror images of train classes as new classes


def _kind(name: str) -> str | None:
    """ "background", "evaluation" or None for a source's base name."""
    low = name.lower()
    if not low.startswith("images_"):
        return None
    return "background" if "background" in low else "evaluation" if "evaluation" in low else None


def find_sources(src: Path) -> list[tuple[str, Path]]:
    """[(kind, zip or folder)] that ``src`` names or holds; a folder wins over its own zip."""
    if not src.exists():
        raise FsmtlError(
            f"{src}: not found; expected an Omniglot zip or images_background/evaluation folder"
        )
    stem = src.name[:-4] if src.suffix == ".zip" else src.name
    if _kind(stem):
        return [(_kind(stem), src)]  # type: ignore[list-item]
    if src.is_file():
        raise FsmtlError(f"{src}: expected images_background*.zip or images_evaluation*.zip")
    found: dict[str, tuple[str, Path]] = {}
    for p in sorted(src.iterdir()):
        stem = p.name[:-4] if p.suffix == ".zip" and p.is_file() else p.name if p.is_dir() else ""
        kind = _kind(stem)
        if kind and (stem not in found or p.is_dir()):
            found[stem] = (kind, p)
    if not found:
        raise FsmtlError(
            f"{src}: expected images_background*/images_evaluation* zips or folders inside, found none"
        )
    return list(found.values())


# An Omniglot PNG is a 105x105 drawing of a few kB; no image this converter can take (--size up to
# 1024, at most 4 channels) needs more than 4 MB even stored uncompressed. A member past this is not
# an Omniglot image, and is refused while it is read, before a zip bomb inflates into memory.
MAX_PNG_BYTES = 8 << 20


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> bytes:
    """A zip member's bytes, read at most :data:`MAX_PNG_BYTES` (+1) whatever its header claims."""
    too_big = FsmtlError(f"{name}: larger than {MAX_PNG_BYTES >> 20} MB, not an Omniglot PNG (refused unread)")
    if info.file_size > MAX_PNG_BYTES:
        raise too_big
    with z.open(info) as m:
        data = m.read(MAX_PNG_BYTES + 1)
    if len(data) > MAX_PNG_BYTES:
        raise too_big
    return data


def _read_source(kind: str, src: Path) -> list[tuple[str, str, bytes]]:
    """[(class id "<Alphabet>/<character>", name for errors, PNG bytes)] of one zip or folder."""
    out = []
    if src.is_dir():
        for p in sorted(src.glob("*/*/*.png")):
            if p.stat().st_size > MAX_PNG_BYTES:
                raise FsmtlError(f"{p}: larger than {MAX_PNG_BYTES >> 20} MB, not an Omniglot PNG (refused unread)")
            out.append((f"{p.parent.parent.name}/{p.parent.name}", str(p), read_file(p)))
    else:
        try:
            with zipfile.ZipFile(src) as z:
                for info in sorted(z.infolist(), key=lambda i: i.filename):
                    parts = info.filename.rstrip("/").split("/")
                    if info.is_dir() or not parts[-1].lower().endswith(".png") or len(parts) < 3:
                        continue
                    name = f"{src}:{info.filename}"
                    out.append((f"{parts[-3]}/{parts[-2]}", name, _read_member(z, info, name)))
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            raise FsmtlError(
                f"{src}: not a readable zip ({e}); expected an Omniglot {kind} archive"
            ) from None
    if not out:
        raise FsmtlError(f"{src}: expected <Alphabet>/<character>/*.png images, found none")
    return out


def _decode_all(
    items: list[tuple[str, str, bytes]], size: int, cfg: PreprocessConfig, desc: str
) -> np.ndarray:
    """uint8 [N, size, size, 1], ink bright, decoded in parallel."""
    images = np.empty((len(items), size, size, 1), dtype=np.uint8)
    parallel_fill(
        images,
        lambda i: decode_image(items[i][2], items[i][1], size=size, channels=1, invert=True),
        cfg.workers,
        desc,
        cfg.progress,
    )
    return images


def _write(
    w: ShardWriter, split: str, images: np.ndarray, ids: list[str], rotations: bool, mirrors: bool
) -> None:
    classes = sorted(set(ids))
    index = {c: k for k, c in enumerate(classes)}
    labels = np.array([index[c] for c in ids], dtype=np.int64)
    # rotations of the mirrored classes too: the eight symmetries of the square
    stages = ([list(MIRROR)] if mirrors else []) + ([list(QUARTER_TURNS)] if rotations else [])
    for stage in stages:
        images, labels, classes = with_class_copies(images, labels, classes, stage)
    if stages:  # recorded: --trainval gives the val classes it merges the same copies
        w.extra_meta.setdefault("class_copies", {})[split] = stages
    # each class's group is its alphabet (rotated characters too): tasks within one alphabet
    w.write_split(split, np.ascontiguousarray(images), labels, classes, [c.split("/")[0] for c in classes])


# Held out by default when no images_evaluation set is given: 2 alphabets to test on, 1 to validate
# (tune) on; the rest train. Held-out alphabets are preferably ones with at least HELD_OUT_MIN_CLASSES
# characters, so that Lake et al.'s 20-way within-alphabet tasks can be drawn from each of them.
DEFAULT_TEST_ALPHABETS = 2
DEFAULT_VAL_ALPHABETS = 1
HELD_OUT_MIN_CLASSES = 20


def hold_out(sizes: dict[str, int], n_test: int, n_val: int) -> tuple[set[str], set[str]]:
    """(test alphabets, val alphabets) of background alphabets {name: characters}.

    Taken from the end of the sorted names, those with at least :data:`HELD_OUT_MIN_CLASSES`
    characters first (the rest only when too few are that large); test first, then val.

    Raises:
        FsmtlError: fewer than n_test + n_val + 1 alphabets (one must stay to train on).
    """
    names = sorted(sizes)
    if n_test + n_val >= len(names):
        raise FsmtlError(f"--val-alphabets {n_val} + --test-alphabets {n_test}: expected fewer than the "
                         f"{len(names)} background alphabets (one must stay for training)")  # fmt: skip
    order = [a for a in reversed(names) if sizes[a] >= HELD_OUT_MIN_CLASSES]
    order += [a for a in reversed(names) if sizes[a] < HELD_OUT_MIN_CLASSES]
    return set(order[:n_test]), set(order[n_test : n_test + n_val])


def _split_of(alphabet: str, test_set: set[str], val_set: set[str]) -> str:
    return "test" if alphabet in test_set else "val" if alphabet in val_set else "train"


def convert_omniglot(cfg: PreprocessConfig, w: ShardWriter) -> list[Path]:
    """Write Omniglot's train (+val) and/or test splits; return the sources read."""
    assert cfg.src is not None
    sources = find_sources(Path(cfg.src))
    with cancelling_pool(min(len(sources), cpu_workers(cfg.workers))) as pool:
        read = list(pool.map(lambda ks: _read_source(*ks), sources))
    items: dict[str, list[tuple[str, str, bytes]]] = {"background": [], "evaluation": []}
    seen: set[tuple[str, str]] = set()
    for (kind, _), part in zip(sources, read):
        for item in part:
            # the official _small1/_small2 subsets share drawings: keep each file once
            key = (item[0], item[1].rsplit("/", 1)[-1])
            if key not in seen:
                seen.add(key)
                items[kind].append(item)
    size = cfg.out_size
    rotations = True if cfg.rotations is None else cfg.rotations
    mirrors = DEFAULT_MIRRORS if cfg.mirrors is None else cfg.mirrors
    n_test = cfg.test_alphabets if cfg.test_alphabets is not None else (0 if items["evaluation"] else DEFAULT_TEST_ALPHABETS)
    n_val = cfg.val_alphabets if cfg.val_alphabets is not None else DEFAULT_VAL_ALPHABETS
    if items["evaluation"] and n_test:
        raise FsmtlError(f"--test-alphabets {n_test}: {cfg.src} has an images_evaluation set, which is the test split; "
                         "pass --test-alphabets 0, or leave the evaluation set out of --src")  # fmt: skip
    if items["background"]:
        bg = items["background"]
        sizes: dict[str, set[str]] = {}
        for c, _, _ in bg:
            sizes.setdefault(c.split("/")[0], set()).add(c)
        test_set, val_set = hold_out({a: len(v) for a, v in sizes.items()}, n_test, n_val)
        images = _decode_all(bg, size, cfg, "omniglot background")
        where = np.array([_split_of(c.split("/")[0], test_set, val_set) for c, _, _ in bg])
        for split in ("train", "val", "test"):
            mask = where == split
            if mask.any():
                ids = [bg[i][0] for i in np.flatnonzero(mask)]
                _write(w, split, images[mask], ids, rotations and split == "train", mirrors and split == "train")
    elif cfg.val_alphabets or cfg.test_alphabets:
        flag = "--val-alphabets" if cfg.val_alphabets else "--test-alphabets"
        raise FsmtlError(f"{flag}: {cfg.src} has no background alphabets to hold out")
    if items["evaluation"]:
        ev = items["evaluation"]
        _write(
            w,
            "test",
            _decode_all(ev, size, cfg, "omniglot evaluation"),
            [c for c, _, _ in ev],
            rotations=False,
            mirrors=False,
        )
    return [src for _, src in sources]
