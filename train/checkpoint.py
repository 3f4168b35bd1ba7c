"""Checkpoints: atomic writes, checksums, RNG capture/restore, weights_only loading, resume checks;
and the run folder's lock (one ``fsmtl train`` at a time per folder).

Everything stored is a tensor or a plain dict/list/number/string, so ``torch.load(...,
weights_only=True)`` reads it (no pickled code runs when a checkpoint is opened). A checkpoint
holds the sha256 of its tensors under ``"checksum"`` (``fsmtl.core.fileio.tensor_checksum``), checked on
every load; checkpoints written before it load unchecked.
"""

from __future__ import annotations

import errno
import io
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fsmtl.core.errors import FsmtlError
from fsmtl.core.fileio import (
    CHECKSUM_KEY, FileLock, atomic_write, load_weights_only, remove_atomic_temporaries, tensor_checksum,
)

# The checkpoint format, defined here once: train writes it, train (--resume) and eval read it.
FORMAT = "fsmtl-checkpoint"
VERSION = 1
REQUIRED_KEYS = ("model_name", "model_kwargs", "model", "config", "data_meta")  # what every reader needs
LOCK_NAME = ".fsmtl-lock"  # RUN/.fsmtl-lock: flocked by the fsmtl train that owns RUN; holds its pid
RUN_FILES = ("config.json", "metrics.jsonl")  # what train writes atomically in RUN ...
CHECKPOINT_FILES = ("best.pt", "last.pt")  # ... and in RUN/checkpoints
# filesystems without flock (e.g. Lustre mounted without it): train then runs without the lock
_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


def checkpoint_dir(run: str | Path) -> Path:
    return Path(run) / "checkpoints"


def _in_use(run: Path, lock: FileLock) -> FsmtlError:
    pid = lock.holder()
    who = f"pid {pid}" if pid is not None else "pid unknown"
    return FsmtlError(f"{run}: another fsmtl train ({who}) is using this run folder")


def lock_run(run: str | Path) -> FileLock | None:
    """Make this process the one owner of run folder ``run``: lock ``run/.fsmtl-lock`` (creating both).

    Held until :meth:`FileLock.release` or the end of the process. Returns None (after a warning)
    where the filesystem has no locks: the run goes on unguarded.

    Raises:
        FsmtlError: another process holds the lock (another ``fsmtl train`` is using ``run``).
    """
    lock = FileLock(Path(run) / LOCK_NAME)
    try:
        if lock.acquire():
            return lock
    except OSError as e:
        if e.errno not in _NO_LOCKS:
            raise
        print(f"fsmtl train: {lock.path}: cannot lock ({e.strerror}); nothing stops a second fsmtl train from "
              "using this run folder at the same time", file=sys.stderr)  # fmt: skip
        return None
    raise _in_use(Path(run), lock)


def check_run_not_in_use(run: str | Path) -> None:
    """Raise the error of :func:`lock_run` if another process holds ``run``'s lock; changes nothing."""
    lock = FileLock(Path(run) / LOCK_NAME)
    try:
        busy = lock.held_elsewhere()
    except OSError:  # no locks here, or unreadable: lock_run decides
        return
    if busy:
        raise _in_use(Path(run), lock)


def remove_run_temporaries(run: str | Path) -> list[Path]:
    """Delete the temporaries of train's atomic writes (RUN_FILES, CHECKPOINT_FILES) that a killed
    run left in ``run`` and its checkpoints folder; only while holding ``run``'s lock."""
    found = remove_atomic_temporaries(run, RUN_FILES)
    return found + remove_atomic_temporaries(checkpoint_dir(run), CHECKPOINT_FILES)


def previous_run_files(run: str | Path) -> list[Path]:
    """What an earlier run left in directory ``run``: its checkpoints, metrics and eval reports
    (not the lock file, which stays after every run)."""
    run = Path(run)
    found = [checkpoint_dir(run) / f"{name}.pt" for name in ("best", "last")] + [run / "metrics.jsonl"]
    found += sorted((run / "reports").glob("eval_*.json")) if (run / "reports").is_dir() else []
    found += sorted((run / "snapshots").glob("t*.pt")) if (run / "snapshots").is_dir() else []
    return [p for p in found if p.is_file()]


def capture_rng(device: torch.device) -> dict[str, Any]:
    """The state of every global generator: torch CPU (+ CUDA), numpy, python ``random``."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    rng: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }  # fmt: skip
    if device.type == "cuda":  # this rank's own GPU only: a resume may see fewer GPUs
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def restore_rng(rng: dict[str, Any], device: torch.device) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(rng["torch"])
    n = rng["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = rng["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if device.type == "cuda" and "cuda" in rng:
        state = rng["cuda"]
        if isinstance(state, (list, tuple)):  # older checkpoints: every visible GPU's state
            index = device.index if device.index is not None else torch.cuda.current_device()
            state = state[index] if index < len(state) else None
        if state is not None:
            torch.cuda.set_rng_state(state, device)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` with its checksum to ``path`` atomically (temporary file in the same folder, then rename)."""
    full = {"format": FORMAT, "version": VERSION, **state}
    full[CHECKSUM_KEY] = tensor_checksum(full)
    buf = io.BytesIO()
    torch.save(full, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()), buf.getbuffer().nbytes)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU with ``weights_only=True``; check its header and checksum.

    Raises:
        FsmtlError: naming ``path``: missing, unreadable, not an fsmtl checkpoint, or damaged.
    """
    path = Path(path)
    if not path.is_file():
        raise FsmtlError(f"{path}: checkpoint not found")
    ckpt = load_weights_only(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise FsmtlError(f"{path}: expected format {FORMAT!r}, got {found!r}")
    if ckpt.get("version") != VERSION:
        raise FsmtlError(f"{path}: expected checkpoint version {VERSION}, got {ckpt.get('version')!r}")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise FsmtlError(f"{path}: checkpoint lacks {missing}")
    if not isinstance(ckpt["data_meta"], dict):
        raise FsmtlError(f"{path}: checkpoint data_meta is not a dict")
    for key in ("mean", "std", "image_shape"):
        if key not in ckpt["data_meta"]:
            raise FsmtlError(f"{path}: checkpoint data_meta lacks {key!r}")
    return ckpt


def upgrade_stored_config(ckpt: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """A checkpoint's config in today's terms, and a note for the user (or None).

    Checkpoints written before ``epoch_length`` counted tasks hold neither ``epoch_unit`` nor a
    ``val_split`` in their config (both came in together): their step count becomes tasks, times
    the tasks of a step on all of their ranks, so the epochs stay the same; and they validated on
    the val split, which ``val_split="val"`` keeps (``auto`` would now pick test under --trainval).
    """
    stored = dict(ckpt["config"])
    if ckpt.get("epoch_unit") == "tasks" or "val_split" in stored:
        return stored, None
    ranks = max(1, len(ckpt.get("rng", {}).get("ranks", [])))
    old = int(stored.get("epoch_length", 1600))
    stored["epoch_length"] = old * int(stored.get("meta_batch_size", 6)) * ranks
    stored["val_split"] = "val"
    note = (f"this run was started by an fsmtl whose --epoch-length counted steps: its {old}-step epochs are "
            f"--epoch-length {stored['epoch_length']} tasks now (the same epochs); DropBlock's ramp now "
            "counts tasks, as the seed did")  # fmt: skip
    return stored, note


def check_checkpoint_belongs(ckpt: dict[str, Any], path: Path, run: Path) -> None:
    """Raise FsmtlError if ``ckpt`` (``run``'s last.pt) was written by another run than the one
    ``run/config.json`` records: a checkpoint copied in from elsewhere would rewrite this run's
    history (its metrics are cut back to the checkpoint's epoch). A whole run folder copied to branch
    a run keeps both, and resumes. Checkpoints and folders from before run ids are not checked."""
    config = run / "config.json"
    mine = ckpt.get("run_id")
    if not mine or not config.is_file():
        return
    try:
        folder = json.loads(config.read_text(encoding="utf-8")).get("run_id")
    except (OSError, ValueError, AttributeError):
        raise FsmtlError(f"{config}: unreadable or not a JSON object (expected the run's config, written by fsmtl train)") from None
    if folder and folder != mine:
        raise FsmtlError(f"{path}: belongs to run {mine}, but {config} records run {folder} (a checkpoint copied from "
                         "another run would rewrite this run's history); resume the run it came from, or copy that "
                         "whole run folder to branch it")  # fmt: skip


def check_resume_matches(ckpt: dict[str, Any], path: Path, model_name: str, model_kwargs: dict[str, Any],
                         data_meta: dict[str, Any]) -> None:
    """Raise FsmtlError if the checkpoint was trained with another model or other data."""
    if ckpt["model_name"] != model_name or dict(ckpt["model_kwargs"]) != model_kwargs:
        raise FsmtlError(
            f"{path}: checkpoint holds model {ckpt['model_name']} {ckpt['model_kwargs']}, "
            f"but the run asks for {model_name} {model_kwargs}"
        )
    saved = ckpt["data_meta"]
    for key in ("benchmark", "image_shape", "n_train_classes"):
        if saved.get(key) != data_meta.get(key):
            raise FsmtlError(
                f"{path}: checkpoint was trained on data with {key}={saved.get(key)!r}, "
                f"but --data has {key}={data_meta.get(key)!r}"
            )
    if not np.allclose(saved["mean"], data_meta["mean"]) or not np.allclose(saved["std"], data_meta["std"]):
        raise FsmtlError(f"{path}: checkpoint's normalisation mean/std differ from --data's")
    if saved.get("train_sha256") and data_meta.get("train_sha256") and saved["train_sha256"] != data_meta["train_sha256"]:
        raise FsmtlError(f"{path}: checkpoint was trained on other images (its train split's files differ from --data's, "
                         "by their sha256 in meta.json); resume on the data it was trained on, or start a new run")  # fmt: skip
