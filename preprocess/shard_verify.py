"""``fsmtl verify``: re-hash the files meta.json lists and check it still describes the arrays."""

from __future__ import annotations

import os


from fsmtl.core.errors import FsmtlError
from fsmtl.core.fileio import sha256_file
from fsmtl.preprocess.shard_reader import load_split, open_shards



def verify_shards(root: str | os.PathLike[str]) -> list[str]:
    """Re-hash every file listed in meta.json.

    Returns:
        One line per problem (``"<path>: sha256 differs"``, ``"<path>: missing"``, or a split whose
        arrays no longer match what meta.json says of them); empty if all is well.
    """
    shards = open_shards(root)
    problems = []
    for rel, digest in shards.meta["files"].items():
        p = shards.root / rel
        if not p.is_file():
            problems.append(f"{p}: missing")
        elif sha256_file(p) != digest:
            problems.append(f"{p}: sha256 differs from meta.json (file changed or corrupt)")
    if not problems:  # meta.json cannot hash itself: check that it still describes the arrays
        for name in shards.splits:
            try:
                load_split(shards.root, name, meta=shards.meta)
            except FsmtlError as e:
                problems.append(str(e))
    return problems


