"""Integrity of shards at the moment of use: the files a split needs are compared with the sha256
meta.json holds for them, and meta.json with its own ``meta.sha256`` (written by the writer since
format version 1's checksummed shards; older shard sets have none and skip that one check).

Hashing a 1.3 GB split costs seconds, so a verified state is cached, keyed by each file's size and
modification time (nanoseconds) and the digest meta.json expects: a start-up after the first pays
only a ``stat`` a file. The cache is ``<root>/.fsmtl-verified.json``, or, where the shard folder
is read-only, a file under ``$XDG_CACHE_HOME/fsmtl/verified`` (``~/.cache``). A file rewritten in
place with the same size and mtime is not re-hashed: ``fsmtl verify`` always re-hashes everything.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

from fsmtl.core.errors import FsmtlError
from fsmtl.core.fileio import atomic_write_json, sha256_file

META_HASH = "meta.sha256"  # hex sha256 of meta.json's bytes, beside it
VERIFIED_CACHE = ".fsmtl-verified.json"
OWN_FILES = ("meta.json", META_HASH, VERIFIED_CACHE)  # a shard folder's files that meta.json does not list


def inside(root: Path, rel: str) -> Path:
    """``root / rel``, refused when ``rel`` leads outside ``root`` (absolute, ``..``, a link out)."""
    path = root / rel
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:  # an absolute rel too: root / "/x" is "/x"
        raise FsmtlError(f"{root / 'meta.json'}: lists {rel!r}, a path outside the shard folder") from None
    return path


def check_meta_hash(root: Path) -> None:
    """FsmtlError when meta.json's bytes do not match ``meta.sha256`` (absent: nothing to check)."""
    stored = root / META_HASH
    if not stored.is_file():
        return
    want = stored.read_text().strip()
    got = hashlib.sha256((root / "meta.json").read_bytes()).hexdigest()
    if got != want:
        raise FsmtlError(f"{root / 'meta.json'}: changed or corrupt (its sha256 differs from {META_HASH}); "
                         f"reconvert, or run 'fsmtl verify {root}'")  # fmt: skip


def split_files(meta: dict[str, Any], split: str) -> list[str]:
    """meta.json's file entries of one split (``split/...``), in a stable order."""
    return sorted(rel for rel in meta.get("files", {}) if rel.split("/")[0] == split)


def _cache_paths(root: Path) -> list[Path]:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fsmtl" / "verified"
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:24]
    return [root / VERIFIED_CACHE, base / f"{key}.json"]


def _read_cache(root: Path) -> dict[str, Any]:
    for path in _cache_paths(root):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("files"), dict):
            return doc["files"]
    return {}


def _write_cache(root: Path, files: dict[str, Any]) -> None:
    for path in _cache_paths(root):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, {"files": files})
            return
        except OSError:
            continue  # a read-only shard folder: the user's cache instead; neither: no cache


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def check_files(root: Path, meta: dict[str, Any], rels: Sequence[str]) -> int:
    """Compare each file of ``rels`` with the sha256 meta.json lists for it.

    Returns the number of files hashed (0 when the cache vouched for all of them).

    Raises:
        FsmtlError: naming the first file that is missing or whose content differs.
    """
    cache = _read_cache(root)
    hashed = 0
    for rel in rels:
        digest = meta["files"][rel]
        path = inside(root, rel)
        if not path.is_file():
            raise FsmtlError(f"{path}: missing (meta.json lists it); reconvert, or run 'fsmtl verify {root}'")
        stamp = _stamp(path)
        entry = cache.get(rel)
        if isinstance(entry, dict) and entry.get("stamp") == stamp and entry.get("sha256") == digest:
            continue
        hashed += 1
        if sha256_file(path) != digest:
            raise FsmtlError(f"{path}: sha256 differs from meta.json (the file changed or is corrupt); reconvert, "
                             f"or run 'fsmtl verify {root}' (--no-verify-data skips this check)")  # fmt: skip
        cache[rel] = {"stamp": stamp, "sha256": digest}
    if hashed:
        _write_cache(root, cache)
    return hashed
