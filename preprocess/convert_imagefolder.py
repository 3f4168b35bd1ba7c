"""Any class-per-directory tree (``<src>/<class>/<image>``), resized to ``--size`` square.

Classes go to splits by a user file (``--split-file``: lines ``<class>,<split>``, or
``<class> <split>``; ``#`` starts a comment) or, without one, by class fractions
(``--ratios train,val,test``) after a shuffle with ``--seed``.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from pathlib import Path

import numpy as np

from fsmtl.core.errors import FsmtlError
from fsmtl.preprocess.config import PreprocessConfig
from fsmtl.preprocess.imaging import IMAGE_SUFFIXES, decode_image, parallel_fill, read_file
from fsmtl.preprocess.shard_writer import ShardWriter
from fsmtl.preprocess.shards import SPLITS
from fsmtl.preprocess.splitlists import check_class_set


def read_split_file(path: Path) -> dict[str, str]:
    """{class: split} from a ``<class>,<split>`` (or whitespace-separated) file."""
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark is not part of the first class
    except OSError as e:
        raise FsmtlError(f"{path}: cannot read split file ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise FsmtlError(f"{path}: expected UTF-8 text, byte {e.start} is not (save the split file as UTF-8)") from None
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = re.sub(r"\s+#.*$", "", line).strip()  # comments: whole lines, or after whitespace ('C#' is a name)
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in (line.rsplit(",", 1) if "," in line else line.rsplit(None, 1))]
        if len(parts) != 2 or parts[1] not in SPLITS:
            raise FsmtlError(f"{path}:{n}: expected '<class>,<train|val|test>', got {line!r}")
        name = unicodedata.normalize("NFC", parts[0])  # as the folder names are matched
        if name in out:
            raise FsmtlError(f"{path}:{n}: class {parts[0]!r} listed twice")
        out[name] = parts[1]
    if not out:
        raise FsmtlError(f"{path}: expected '<class>,<split>' lines, found none")
    return out


def split_by_ratios(
    classes: list[str], ratios: tuple[float, float, float], seed: int
) -> dict[str, str]:
    """{class: split}: a seeded shuffle of the classes cut by fractions (rounded; rest to train).

    Every split with a positive ratio gets at least one class when there are enough classes.
    """
    total = float(sum(ratios))
    counts = [int(round(len(classes) * r / total)) for r in ratios]
    for i in (1, 2):
        if ratios[i] > 0 and counts[i] == 0 and len(classes) >= 3:
            counts[i] = 1
    counts[0] = len(classes) - counts[1] - counts[2]
    if counts[0] < (1 if ratios[0] > 0 else 0):
        raise FsmtlError(f"--ratios {ratios}: {len(classes)} classes are too few to split")
    perm = np.random.default_rng(seed).permutation(len(classes))
    bounds = np.cumsum([0] + counts)
    return {classes[j]: SPLITS[s] for s in range(3) for j in perm[bounds[s] : bounds[s + 1]]}


def _warn(text: str) -> None:
    print(f"fsmtl convert: warning: {text}", file=sys.stderr)


def _scan(src: Path) -> dict[str, list[Path]]:
    """{class name (NFC-normalised folder name): sorted image paths}.

    Hidden files and folders (``.x``, macOS ``._x``) are skipped; so are class folders without
    images, images in sub-folders of a class folder, and images directly in ``src`` (all with a
    warning; images only directly in ``src``, with no class folder, are an error). Symlinks are
    followed; two class folders that are the same folder are refused (the images would be in two
    classes, maybe in two splits).
    """
    if not src.exists():
        raise FsmtlError(f"{src}: not found; expected a folder with one sub-folder of images per class")
    if not src.is_dir():
        raise FsmtlError(f"{src}: expected a folder with one sub-folder of images per class, got a file")
    out: dict[str, list[Path]] = {}
    seen: dict[Path, Path] = {}
    nested = []
    folders = [p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")]
    # sorted by the normalised name: the same classes, labels and seeded split on every file system
    for d in sorted(folders, key=lambda p: unicodedata.normalize("NFC", p.name)):
        entries = [p for p in d.iterdir() if not p.name.startswith(".")]
        files = sorted(p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        nested += [p for p in entries if p.is_dir()]
        if not files:
            _warn(f"{d}: no images ({', '.join(IMAGE_SUFFIXES)}): not a class, skipped")
            continue
        real = d.resolve()
        if real in seen:
            raise FsmtlError(f"{d}: is the same folder as {seen[real]} (a symlink?); each class must be its own folder")
        seen[real] = d
        name = unicodedata.normalize("NFC", d.name)
        if name in out:
            raise FsmtlError(f"{d}: names the same class as another folder once Unicode forms are unified; rename one")
        out[name] = files
    owners: dict[Path, str] = {}
    shared = []
    for name, files in out.items():
        for f in files:
            real = f.resolve()
            if real in owners and owners[real] != name:
                shared.append((f, owners[real]))
            owners.setdefault(real, name)
    if shared:
        f, other = shared[0]
        _warn(f"{len(shared)} image(s) are the same file in two classes (symlinks), e.g. {f} is also in "
              f"{other!r}: such an image can land in two splits")  # fmt: skip
    if nested:
        _warn(f"{len(nested)} sub-folder(s) inside class folders (e.g. {nested[0]}) are not read: a class is one flat folder")
    loose = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))  # fmt: skip
    if not out and loose:
        raise FsmtlError(f"{src}: holds {len(loose)} image file(s) directly (e.g. {loose[0].name}) and no class "
                         f"folder of images; the images must be in one sub-folder per class: {src}/<class>/<image>")  # fmt: skip
    if not out:
        raise FsmtlError(f"{src}: expected class sub-folders holding images, found none")
    if loose:
        _warn(f"{len(loose)} image file(s) directly in {src} (e.g. {loose[0].name}) are not read: a class is a sub-folder")
    return out


def _scan_groups(src: Path) -> tuple[dict[str, list[Path]], dict[str, str]]:
    """``--group-folders``: ``<src>/<group>/<class>/<image>``. Returns ({"<group>/<class>": sorted
    image paths}, {"<group>/<class>": group}); each group folder is scanned as :func:`_scan` scans
    ``src`` (its hidden entries skipped, its loose images and empty class folders warned about)."""
    if not src.is_dir():
        raise FsmtlError(f"{src}: expected a folder of group folders holding class folders (--group-folders)")
    groups = sorted((p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")),
                    key=lambda p: unicodedata.normalize("NFC", p.name))  # fmt: skip
    tree: dict[str, list[Path]] = {}
    group_of: dict[str, str] = {}
    for g in groups:
        name = unicodedata.normalize("NFC", g.name)
        if not any(p.is_dir() and not p.name.startswith(".") for p in g.iterdir()):
            _warn(f"{g}: no class folders inside: not a group, skipped (--group-folders reads <src>/<group>/<class>/<image>)")
            continue
        for cls, files in _scan(g).items():
            tree[f"{name}/{cls}"] = files
            group_of[f"{name}/{cls}"] = name
    if not tree:
        raise FsmtlError(f"{src}: expected <group>/<class>/<image> folders (--group-folders), found no class folder of images")
    return tree, group_of


def convert_imagefolder(cfg: PreprocessConfig, w: ShardWriter) -> list[Path]:
    """Write the splits of a class-per-directory tree; return the source folder.

    With ``cfg.group_folders`` the tree is ``<src>/<group>/<class>/<image>``: classes are named
    ``<group>/<class>`` (so in a --split-file too) and each class's group is recorded (classes.json
    categories), for tasks within one group (fsmtl train --train-within-group / --val-within-group).
    """
    assert cfg.src is not None
    src = Path(cfg.src)
    group_of: dict[str, str] | None = None
    if cfg.group_folders:
        tree, group_of = _scan_groups(src)
    else:
        tree = _scan(src)
    if cfg.split_file is not None:
        assignment = read_split_file(Path(cfg.split_file))
        check_class_set(str(src), list(tree), list(assignment), f"split file {cfg.split_file}")
    else:
        assignment = split_by_ratios(list(tree), cfg.ratios, cfg.seed)
    size, channels = cfg.out_size, cfg.channels
    for split in SPLITS:
        classes = [c for c in tree if assignment[c] == split]
        if not classes:
            continue
        if len(classes) < 5:
            _warn(f"split {split!r} gets {len(classes)} class(es): too few for the usual 5-way tasks (set --ratios or --split-file)")
        paths = [p for c in classes for p in tree[c]]
        labels = np.repeat(np.arange(len(classes), dtype=np.int64), [len(tree[c]) for c in classes])
        out = w.alloc_images(split, len(paths), (size, size, channels))
        parallel_fill(
            out,
            lambda i: decode_image(
                read_file(paths[i]), str(paths[i]), size=size, channels=channels, exif=True
            ),
            cfg.workers,
            f"imagefolder {split}",
            cfg.progress,
        )
        out.flush()
        del out
        w.finish_split(split, labels, classes, None if group_of is None else [group_of[c] for c in classes])
    return [src]
