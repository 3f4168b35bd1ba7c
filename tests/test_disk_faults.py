"""A full disk while converting: one line naming --out and the bytes needed, never SIGBUS, nothing left."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fsmtl.cli import main as cli

SMALL = ["--size", "32", "--classes", "6,3,3", "--per-class", "20"]


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A 3 MB tmpfs (root and mount(8) needed; skipped elsewhere)."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_converting_onto_a_full_file_system_is_one_line_and_leaves_nothing(small_tmpfs: Path) -> None:
    # before the fix: SIGBUS while filling the memory-mapped images, no message, a hidden temporary
    # folder keeping the disk full
    proc = subprocess.run([sys.executable, "-m", "fsmtl", "convert", "synthetic", "--out", str(small_tmpfs / "s"), "--size", "32"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fsmtl: error: {small_tmpfs / 's'}: not enough free space for the train images")
    assert "GB needed" in lines[0] and "free on that file system" in lines[0]
    assert list(small_tmpfs.iterdir()) == []


def test_a_reservation_refused_by_the_file_system_is_the_same_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)  # the space went between the check and the write
    assert cli(["convert", "synthetic", "--out", str(tmp_path / "s"), *SMALL]) == 2
    assert "not enough free space for the train images" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_file_system_without_fallocate_still_converts(tmp_path: Path, monkeypatch) -> None:
    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    assert cli(["convert", "synthetic", "--out", str(tmp_path / "s"), *SMALL]) == 0
    assert (tmp_path / "s" / "meta.json").is_file()


def test_the_disk_filling_up_later_names_out_and_removes_the_temporary(tmp_path: Path, monkeypatch, capsys) -> None:
    real = np.save

    def save(path, *args, **kwargs):
        if str(path).endswith("labels.npy"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(np, "save", save)
    assert cli(["convert", "synthetic", "--out", str(tmp_path / "s"), *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fsmtl: error: {tmp_path / 's'}: the disk filled up while writing (No space left on device")
    assert len(err.splitlines()) == 1 and ".tmp-" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_that_does_not_fit_names_the_file_and_the_bytes_and_keeps_the_old_one(tmp_path: Path, monkeypatch) -> None:
    import torch

    from fsmtl.core.errors import FsmtlError
    from fsmtl.train import checkpoint as ck

    state = {"model_name": "conv4", "model_kwargs": {}, "config": {}, "model": {"w": torch.ones(1000)},
             "data_meta": {"mean": [0.5], "std": [0.5], "image_shape": [32, 32, 1]}, "epoch": 1}  # fmt: skip
    path = tmp_path / "last.pt"
    ck.save_checkpoint(path, state)
    before = path.read_bytes()
    real_fsync = os.fsync

    def full(fd):  # the disk fills up as the new checkpoint is flushed
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(FsmtlError, match=rf"^{path}: cannot be written \(No space left on device; [\d,]+ bytes needed\); "
                                         "the previous file, if any, is unchanged$"):  # fmt: skip
        ck.save_checkpoint(path, {**state, "epoch": 2})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert path.read_bytes() == before and ck.load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary left


def test_a_metrics_line_that_does_not_fit_names_the_file_and_leaves_no_partial_line(tmp_path: Path, monkeypatch) -> None:
    import json

    from fsmtl.core.errors import FsmtlError
    from fsmtl.train.runlog import RunLog, read_metrics

    log = RunLog(tmp_path, enabled=True)
    log.epoch({"epoch": 1, "step": 4, "train_loss": 1.0})
    before = (tmp_path / "metrics.jsonl").read_bytes()
    real_fsync = os.fsync

    def full(fd):  # the line went into the page cache, the disk is full when it is flushed
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(FsmtlError, match=rf"^{tmp_path / 'metrics.jsonl'}: cannot be appended to \(No space left on device; "
                                         r"[\d,]+ bytes needed\); the lines before are unchanged$"):  # fmt: skip
        log.epoch({"epoch": 2, "step": 8, "train_loss": 0.5})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert (tmp_path / "metrics.jsonl").read_bytes() == before  # cut back: no half line
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1] and json.loads(before)["step"] == 4
