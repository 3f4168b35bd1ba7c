"""The data shipped inside fsmtl: the two Omniglot "background small" zips (MIT, Lake 2015).

Ground layer: the demo (command line) and the race benchmark both convert them.
"""

from __future__ import annotations

from pathlib import Path

from fsmtl.core.errors import FsmtlError
from fsmtl.core.fileio import sha256_file

EMBEDDED_OMNIGLOT = Path(__file__).resolve().parent.parent / "data" / "omniglot"


def check_embedded_omniglot(folder: Path = EMBEDDED_OMNIGLOT) -> list[Path]:
    """The embedded zips, each checked against ``folder/SHA256SUMS``; FsmtlError naming the file otherwise."""
    sums = folder / "SHA256SUMS"
    if not sums.is_file():
        raise FsmtlError(f"{sums}: not found (the embedded Omniglot data is incomplete; reinstall fsmtl)")
    zips = []
    for line in sums.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        path = folder / name.strip()
        if not path.is_file():
            raise FsmtlError(f"{path}: not found (listed in {sums}; reinstall fsmtl)")
        got = sha256_file(path)
        if got != digest:
            raise FsmtlError(f"{path}: SHA256 {got[:16]}... is not the {digest[:16]}... of {sums} (a damaged copy; reinstall fsmtl)")
        zips.append(path)
    if not zips:
        raise FsmtlError(f"{sums}: lists no files")
    return zips
