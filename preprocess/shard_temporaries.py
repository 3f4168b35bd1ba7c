"""Replacing an output folder safely: the check that it may be replaced, the temporary folder
named for this host and process, and removing those that killed conversions left."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import time
from pathlib import Path


from fsmtl.core.errors import FsmtlError
from fsmtl.preprocess.shard_integrity import OWN_FILES
from fsmtl.preprocess.shards import FORMAT_NAME



def check_replaceable(out: Path, force: bool) -> None:
    """Refuse to overwrite ``out`` unless ``force`` and it is an empty folder or a shard directory.

    ``--force`` replaces earlier output of fsmtl, never a folder of anything else (source images,
    a home directory given by mistake).
    """
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise FsmtlError(f"{out}: already exists (pass --force to replace a shard directory)")
    if not out.is_dir() or out.is_symlink():
        raise FsmtlError(f"{out}: not a directory; --force replaces only a shard directory")
    cwd = Path.cwd().resolve()
    if out.resolve() == cwd or out.resolve() in cwd.parents:
        raise FsmtlError(f"{out}: is the current directory or holds it; --force will not replace it (cd elsewhere)")
    if any(out.iterdir()):
        try:
            meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise FsmtlError(f"{out}: holds files that are not fsmtl shards (no fsmtl meta.json); --force replaces "
                             "only a shard directory: remove it yourself or choose another --out")  # fmt: skip
        ours = {*OWN_FILES, *meta.get("files", {})}  # meta.json, its sha256, the verified-state cache
        ours |= {str(Path(f).parents[i].as_posix()) for f in ours for i in range(len(Path(f).parents) - 1)}
        for p in sorted(out.rglob("*")):
            rel = p.relative_to(out).as_posix()
            if rel not in ours:
                raise FsmtlError(f"{p}: not written by fsmtl convert; --force replaces a shard directory only "
                                 "as fsmtl wrote it: move that file away first")  # fmt: skip


def temporary_name(out: Path) -> str:
    """``.<out>.tmp-<host>-<pid>-<ns>``: the host and pid tell a later run whether its writer lives."""
    return f".{out.name}.tmp-{_host()}-{os.getpid()}-{time.time_ns()}"


def _host() -> str:
    return "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40] or "host"


def remove_stale_temporaries(out: Path) -> None:
    """Delete the temporary folders of conversions into ``out`` that were killed on this host.

    Only folders named for this host are judged (another machine's pids mean nothing here, e.g.
    on a shared file system), and only on POSIX, where ``kill(pid, 0)`` asks whether a pid lives.
    """
    if os.name != "posix":
        return
    prefix = f".{out.name}.tmp-{_host()}-"
    for tmp in out.parent.glob(f"{glob.escape(prefix)}*"):
        try:
            pid = int(tmp.name[len(prefix):].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


