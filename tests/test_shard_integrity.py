"""Shards are checked when they are used: sha256 against meta.json (cached by size and mtime),
meta.json against its own meta.sha256, and fsmtl verify's view of what does not belong."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import rewrite_meta
from fsmtl.cli import main as cli
from fsmtl.core.errors import FsmtlError
from fsmtl.preprocess.shard_integrity import VERIFIED_CACHE, check_files, split_files
from fsmtl.preprocess.shard_reader import load_split, open_shards
from fsmtl.train.config import TrainConfig
from fsmtl.train.run import build_run


@pytest.fixture
def shards(tiny_shards: Path, tmp_path: Path) -> Path:
    out = tmp_path / "s"
    shutil.copytree(tiny_shards, out)
    (out / VERIFIED_CACHE).unlink(missing_ok=True)
    return out


def _flip_a_pixel(root: Path) -> Path:
    """One bit of one image changed in place, size and header intact."""
    path = root / "train" / "images.npy"
    arr = np.load(path, mmap_mode="r+")
    arr[3, 5, 7, 0] ^= 0x10
    arr.flush()
    del arr
    return path


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(out), model="conv4", meta_batch_size=1, epoch_length=2,
                       val_epoch_length=4, test_queries=5, max_epochs=1, wandb="disabled", progress=False, **kw)  # fmt: skip


def test_training_refuses_shards_whose_images_changed_and_can_be_told_not_to_check(shards: Path, tmp_path: Path) -> None:
    path = _flip_a_pixel(shards)
    with pytest.raises(FsmtlError, match=rf"^{path}: sha256 differs from meta.json .*--no-verify-data skips this check\)$"):
        build_run(_cfg(shards, tmp_path / "r1"))
    assert not (tmp_path / "r1" / "config.json").exists()
    build_run(_cfg(shards, tmp_path / "r2", verify_data=False))  # the user's choice: starts
    with pytest.raises(FsmtlError, match="sha256 differs"):  # eval's loader checks the same way
        load_split(shards, "train", verify=True)
    assert load_split(shards, "test", verify=True).n_classes == 5  # the other splits are intact


def test_a_verified_state_is_cached_by_size_and_mtime(shards: Path) -> None:
    meta = open_shards(shards).meta
    rels = split_files(meta, "train")
    assert rels == ["train/classes.json", "train/images.npy", "train/labels.npy"]
    assert check_files(shards, meta, rels) == 3  # first use: every file hashed
    assert check_files(shards, meta, rels) == 0  # then only a stat each
    cache = json.loads((shards / VERIFIED_CACHE).read_text())["files"]
    assert set(cache) == set(rels)
    images = shards / "train" / "images.npy"
    os.utime(images, ns=(images.stat().st_atime_ns, images.stat().st_mtime_ns + 1))
    assert check_files(shards, meta, rels) == 1  # touched: hashed again (and still equal)
    _flip_a_pixel(shards)  # rewritten: a new mtime, so the change is seen
    with pytest.raises(FsmtlError, match="images.npy: sha256 differs"):
        check_files(shards, meta, rels)


def test_a_shard_folder_that_cannot_hold_the_cache_uses_the_users_cache(shards: Path, tmp_path: Path, monkeypatch) -> None:
    (shards / VERIFIED_CACHE).mkdir()  # the folder's own cache cannot be written (as when read-only)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    meta = open_shards(shards).meta
    rels = split_files(meta, "val")
    assert check_files(shards, meta, rels) == 3
    assert len(list((tmp_path / "xdg" / "fsmtl" / "verified").glob("*.json"))) == 1
    assert check_files(shards, meta, rels) == 0


def test_an_edited_meta_json_is_refused_at_open_and_by_verify(shards: Path, capsys) -> None:
    meta = json.loads((shards / "meta.json").read_text())
    meta["mean"] = [0.0, 0.0, 0.0]  # would silently change every normalised image
    (shards / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FsmtlError, match=r"meta.json: changed or corrupt \(its sha256 differs from meta.sha256\)"):
        open_shards(shards)
    assert cli(["verify", str(shards)]) == 2
    assert "changed or corrupt" in capsys.readouterr().err


def test_verify_names_files_it_does_not_expect_and_refuses_paths_outside_the_folder(shards: Path, capsys) -> None:
    (shards / "train" / "notes.txt").write_text("mine")
    assert cli(["verify", str(shards)]) == 1
    assert f"{shards / 'train' / 'notes.txt'}: not listed in meta.json" in capsys.readouterr().out
    (shards / "train" / "notes.txt").unlink()
    meta = json.loads((shards / "meta.json").read_text())
    meta["files"]["../outside.bin"] = "0" * 64
    rewrite_meta(shards, meta)
    assert cli(["verify", str(shards)]) == 2
    assert "lists '../outside.bin', a path outside the shard folder" in capsys.readouterr().err
    assert cli(["verify", str(shards)]) == 2  # and nothing outside was read or written
