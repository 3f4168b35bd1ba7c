"""Atomic file writes and hashing shared by every stage that writes to disk."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, IO

from fsmtl.core.errors import FsmtlError

_HASH_CHUNK = 1 << 22


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask is a global flip)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a temporary file in the same folder, fsync, then rename.

    A crash or an exception inside ``write`` leaves the old file (or nothing) in place,
    never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented UTF-8 JSON."""
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


def read_json(path: str | os.PathLike[str], what: str = "JSON") -> Any:
    """Read a JSON file, turning any failure into an FsmtlError that names the file."""

    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FsmtlError(f"{path}: file not found (expected {what})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FsmtlError(f"{path}: not valid {what}: {e}") from None


def checkpoint_load_error(path: str | os.PathLike[str], error: BaseException) -> str:
    """One plain line for a file that ``torch.load(weights_only=True)`` refused.

    torch's own message spans lines, carries ANSI colour codes and advises loading with
    ``weights_only=False`` (which runs arbitrary code from the file): none of that is shown."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    if isinstance(error, OSError) and not isinstance(error, pickle.UnpicklingError):
        return f"{path}: cannot be read ({type(error).__name__}: {error.strerror or error})"
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return f"{path}: not an fsmtl checkpoint: the file is empty"
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    refused = isinstance(error, pickle.UnpicklingError) and "weights only load failed" in text.lower()
    if found or (refused and zipfile.is_zipfile(path)):  # a torch file, but not only tensors and containers
        what = f" (found {found.group(1)})" if found else ""
        return (f"{path}: not an fsmtl checkpoint: it holds objects beyond tensors and plain containers{what}, "
                "and fsmtl loads checkpoints with weights_only=True")
    if "zip archive" in text:
        return f"{path}: not a readable fsmtl checkpoint: a torch file that is damaged or cut short (unreadable zip archive)"
    return f"{path}: not an fsmtl checkpoint: not a torch file (expected a .pt file written by fsmtl train)"


def load_weights_only(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``: no code in the file runs.

    Raises:
        FsmtlError: one plain line (:func:`checkpoint_load_error`) for any file it cannot load.
    """
    import torch

    try:
        with warnings.catch_warnings():  # e.g. torch's pickle-protocol warning on a foreign file: the error says it
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input problem
        raise FsmtlError(checkpoint_load_error(path, e)) from None
