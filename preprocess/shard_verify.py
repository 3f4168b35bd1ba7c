"""``fsmtl verify``: re-hash the files meta.json lists and check it still describes the arrays."""

from __future__ import annotations

import os


from fsmtl.core.errors import FsmtlError
from fsmtl.core.fileio import sha256_file
from fsmtl.preprocess.shard_integrity import OWN_FILES, inside
from fsmtl.preprocess.shard_reader import load_split, open_shards



def verify_shards(root: str | os.PathLike[str]) -> list[str]:
    """Re-hash every file listed in meta.json (no cache), and list files it does not expect.

    Returns:
        One line per problem (``"<path>: sha256 differs"``, ``"<path>: missing"``, ``"<path>: not
        listed in meta.json"``, or a split whose arrays no longer match what meta.json says of
        them); empty if all is well.

    Raises:
        FsmtlError: meta.json unreadable or changed (its own sha256), or listing a path outside
            the shard folder.
    """
    shards = open_shards(root)  # checks meta.json's own sha256
    problems = []
    listed = set()
    for rel, digest in shards.meta["files"].items():
        p = inside(shards.root, rel)
        listed.add(p.resolve())
        if not p.is_file():
            problems.append(f"{p}: missing")
        elif sha256_file(p) != digest:
            problems.append(f"{p}: sha256 differs from meta.json (file changed or corrupt)")
    for p in sorted(shards.root.rglob("*")):
        if p.is_file() and p.resolve() not in listed and p.relative_to(shards.root).as_posix() not in OWN_FILES:
            problems.append(f"{p}: not listed in meta.json (a file fsmtl did not write here)")
    if not problems:  # meta.json cannot hash itself: check that it still describes the arrays
        for name in shards.splits:
            try:
                load_split(shards.root, name, meta=shards.meta)
            except FsmtlError as e:
                problems.append(str(e))
    return problems


def reusable_shards(root: str | os.PathLike[str], benchmark: str, size: int | None = None) -> bool:
    """Whether ``root`` already holds whole shards of ``benchmark`` (at side ``size`` when given)
    whose files match their recorded checksums: a converted folder a later command may reuse."""
    try:
        meta = open_shards(root).meta
        same = meta.get("benchmark") == benchmark and (size is None or int(meta["image_shape"][0]) == size)
        return bool(same) and not verify_shards(root)
    except (FsmtlError, KeyError, TypeError, ValueError):
        return False
