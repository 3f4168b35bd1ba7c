"""The canonical shard format: writing, loading with checks, verifying hashes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fsmtl.core.errors import FsmtlError
from fsmtl.preprocess.shard_reader import load_split, open_shards
from fsmtl.preprocess.shard_verify import verify_shards
from fsmtl.preprocess.shard_writer import ShardWriter


def _write(out, labels, n_classes=3, shape=(8, 8, 3)):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(len(labels), *shape), dtype=np.uint8)
    with ShardWriter(out, "toy") as w:
        w.write_split("train", images, np.asarray(labels), [f"c{i}" for i in range(n_classes)])
        w.commit()
    return images


def test_write_split_sorts_rows_by_label_and_keeps_image_label_pairs(tmp_path):
    labels = [2, 0, 1, 0, 2, 1]
    images = _write(tmp_path / "s", labels)
    split = load_split(tmp_path / "s", "train")
    assert split.labels.tolist() == [0, 0, 1, 1, 2, 2]
    order = np.argsort(labels, kind="stable")
    np.testing.assert_array_equal(np.asarray(split.images), images[order])
    assert split.class_offsets.tolist() == [0, 2, 4, 6]
    assert split.class_rows(1) == slice(2, 4)


def test_meta_records_train_mean_and_std_on_unit_scale(tmp_path):
    images = _write(tmp_path / "s", [0, 1, 2])
    meta = open_shards(tmp_path / "s").meta
    ref = images.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(meta["mean"], ref.mean(0), rtol=1e-9)
    np.testing.assert_allclose(meta["std"], ref.std(0), rtol=1e-9)


def test_writer_refuses_existing_output_without_force(tmp_path):
    (tmp_path / "s").mkdir()
    with pytest.raises(FsmtlError, match="already exists"):
        ShardWriter(tmp_path / "s", "toy")


def test_failed_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(FsmtlError):
        with ShardWriter(tmp_path / "s", "toy") as w:
            w.write_split("train", np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 0]), ["a", "b"])
    assert list(tmp_path.iterdir()) == []


def test_verify_names_the_file_with_a_flipped_byte(tmp_path):
    _write(tmp_path / "s", [0, 1, 2])
    assert verify_shards(tmp_path / "s") == []
    p = tmp_path / "s" / "train" / "images.npy"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    problems = verify_shards(tmp_path / "s")
    assert len(problems) == 1 and "train/images.npy" in problems[0]


def test_load_rejects_labels_that_disagree_with_meta(tmp_path):
    _write(tmp_path / "s", [0, 1, 2])
    np.save(tmp_path / "s" / "train" / "labels.npy", np.array([0, 2, 1], dtype=np.int64))
    with pytest.raises(FsmtlError, match="labels.npy"):
        load_split(tmp_path / "s", "train")


def test_load_rejects_wrong_format_version(tmp_path):
    _write(tmp_path / "s", [0, 1, 2])
    meta_path = tmp_path / "s" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["version"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(FsmtlError, match="version 1, got 99"):
        open_shards(tmp_path / "s")


def test_images_are_memory_mapped_by_default(tiny_shards):
    split = load_split(tiny_shards, "train")
    assert isinstance(split.images, np.memmap)
    assert split.images.dtype == np.uint8 and split.images.shape[1:] == (32, 32, 3)


def test_atomic_writes_get_ordinary_file_permissions(tmp_path):
    import os

    from fsmtl.core.fileio import atomic_write_json

    atomic_write_json(tmp_path / "x.json", {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_an_output_folder_that_cannot_be_created_is_named_as_given_not_as_the_hidden_temporary(tmp_path, monkeypatch):
    from fsmtl.preprocess import shard_writer

    # the temporary beside --out cannot be made (as in /proc or a read-only folder)
    monkeypatch.setattr(shard_writer, "temporary_name", lambda out: f"no_such_folder/.{out.name}.tmp-1")
    out = tmp_path / "s"
    with pytest.raises(FsmtlError) as e:
        ShardWriter(out, "toy")
    assert str(e.value).startswith(f"{out}: cannot write the output there") and ".tmp-" not in str(e.value)
    assert "choose another --out" in str(e.value) and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_an_output_in_proc_names_the_out_path_given():
    with pytest.raises(FsmtlError, match=r"^/proc/fsmtl-out: cannot write the output there"):
        ShardWriter("/proc/fsmtl-out", "toy")
