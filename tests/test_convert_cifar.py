"""CIFAR-FS and FC100 from a small CIFAR-100 python version written in the real layout."""

from __future__ import annotations

import os
import pickle
import tarfile

import numpy as np
import pytest

from fsmtl.benchmarks.bench_convert import write_fake_cifar100
from fsmtl.cli import main as cli
from fsmtl.preprocess.shard_reader import open_shards
from fsmtl.preprocess.shard_verify import verify_shards
from fsmtl.preprocess.splitlists import cifar100_names, class_lists


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    """cifar-100-python/ with 3 train + 1 test image per fine class (400 images)."""
    return write_fake_cifar100(
        tmp_path_factory.mktemp("cifar"), train_per_class=3, test_per_class=1, seed=3
    )


def _load_rows(path):
    with open(path, "rb") as f:
        b = pickle.load(f)  # our own test file: trusted
    return b[b"data"], np.asarray(b[b"fine_labels"])


def _convert(benchmark, src, out, *extra):
    return cli(
        ["convert", benchmark, "--src", str(src), "--out", str(out), "--no-progress", *extra]
    )


def test_cifar_fs_has_64_16_20_classes_of_4_images_with_pixels_in_hwc_order(cifar_dir, tmp_path):
    assert _convert("cifar-fs", cifar_dir, tmp_path / "fs") == 0
    shards = open_shards(tmp_path / "fs")
    lists = class_lists("cifar-fs")
    assert shards.image_shape == (32, 32, 3) and shards.benchmark == "cifar-fs"
    for split, n in (("train", 64), ("val", 16), ("test", 20)):
        s = shards.split(split)
        assert s.classes == lists[split] and s.n_classes == n
        assert s.class_counts.tolist() == [4] * n
    # class "apple" (fine index 0) is train class 0: its images are the train rows then the test row
    fine_names, _, _ = cifar100_names()
    rows = []
    for name in ("train", "test"):
        data, fine = _load_rows(cifar_dir / name)
        rows.append(data[fine == fine_names.index("apple")])
    expected = np.concatenate(rows).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(np.asarray(shards.split("train").images[0:4]), expected)
    assert verify_shards(tmp_path / "fs") == []
    assert [s["name"] for s in shards.meta["sources"]] == ["cifar-100-python"]


def test_fc100_keeps_the_superclass_of_every_class_as_its_category(cifar_dir, tmp_path):
    assert _convert("fc100", cifar_dir, tmp_path / "fc") == 0
    shards = open_shards(tmp_path / "fc")
    train = shards.split("train")
    assert [shards.split(s).n_classes for s in ("train", "val", "test")] == [60, 20, 20]
    assert sorted(set(train.categories)) == class_lists("fc100")["train"]
    assert train.categories[train.classes.index("aquarium_fish")] == "fish"


def test_the_tar_gz_gives_the_same_shards_as_the_folder(cifar_dir, tmp_path):
    tgz = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(cifar_dir, arcname="cifar-100-python")
    assert _convert("cifar-fs", tgz, tmp_path / "a") == 0
    assert _convert("cifar-fs", cifar_dir.parent, tmp_path / "b") == 0  # the folder holding it
    a, b = open_shards(tmp_path / "a"), open_shards(tmp_path / "b")
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(np.asarray(a.split(s).images), np.asarray(b.split(s).images))


def _bad_copy(cifar_dir, tmp_path, edit):
    """A copy of the CIFAR folder whose train batch is changed by ``edit(dict)``."""
    d = tmp_path / "bad" / "cifar-100-python"
    d.mkdir(parents=True)
    for name in ("test", "meta"):
        (d / name).write_bytes((cifar_dir / name).read_bytes())
    with open(cifar_dir / "train", "rb") as f:
        batch = pickle.load(f)
    (d / "train").write_bytes(pickle.dumps(edit(batch), protocol=2))
    return d


def _assert_failed_cleanly(rc, capsys, tmp_path, out, *fragments):
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    for frag in fragments:
        assert frag in err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name]


def test_a_truncated_batch_exits_2_naming_the_file_and_leaves_nothing(cifar_dir, tmp_path, capsys):
    d = _bad_copy(cifar_dir, tmp_path, lambda b: b)
    data = (d / "train").read_bytes()
    (d / "train").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out" / "fs"
    out.parent.mkdir()
    _assert_failed_cleanly(
        _convert("cifar-fs", d, out), capsys, tmp_path, out, str(d / "train"), "truncated"
    )


def test_wrong_dtype_of_data_is_named(cifar_dir, tmp_path, capsys):
    d = _bad_copy(cifar_dir, tmp_path, lambda b: {**b, b"data": b[b"data"].astype(np.int32)})
    out = tmp_path / "out" / "fs"
    out.parent.mkdir()
    _assert_failed_cleanly(
        _convert("cifar-fs", d, out), capsys, tmp_path, out, "expected 'data' uint8", "int32"
    )


def test_a_fine_class_without_images_is_named(cifar_dir, tmp_path, capsys):
    def drop_bear(b):
        fine = np.asarray(b[b"fine_labels"])
        return {**b, b"fine_labels": np.where(fine == 3, 0, fine).tolist()}

    d = _bad_copy(cifar_dir, tmp_path, drop_bear)
    (d / "test").write_bytes(
        pickle.dumps(drop_bear(pickle.loads((d / "test").read_bytes())), protocol=2)
    )
    out = tmp_path / "out" / "fs"
    out.parent.mkdir()
    _assert_failed_cleanly(
        _convert("cifar-fs", d, out), capsys, tmp_path, out, "bear", "100 CIFAR-100 fine classes"
    )


def test_a_batch_that_would_run_a_command_is_refused(cifar_dir, tmp_path, capsys):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    d = _bad_copy(cifar_dir, tmp_path, lambda b: {**b, b"filenames": Evil()})
    out = tmp_path / "out" / "fs"
    out.parent.mkdir()
    _assert_failed_cleanly(
        _convert("cifar-fs", d, out), capsys, tmp_path, out, str(d / "train"), "refusing"
    )
    assert not marker.exists()


def test_a_corrupt_tar_gz_exits_2(cifar_dir, tmp_path, capsys):
    tgz = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(cifar_dir, arcname="cifar-100-python")
    data = tgz.read_bytes()
    tgz.write_bytes(data[: len(data) // 3])
    out = tmp_path / "out" / "fs"
    out.parent.mkdir()
    _assert_failed_cleanly(_convert("cifar-fs", tgz, out), capsys, tmp_path, out, str(tgz))


def test_cifar_shards_normalise_with_the_seeds_constants_unless_asked_for_the_datas(cifar_dir, tmp_path):
    import json

    from fsmtl.preprocess.shard_writer import channel_stats

    assert _convert("fc100", cifar_dir, tmp_path / "seed") == 0
    meta = json.loads((tmp_path / "seed" / "meta.json").read_text())
    assert meta["normalization"] == "seed"
    assert meta["mean"] == [0.5071, 0.4867, 0.4408] and meta["std"] == [0.2675, 0.2565, 0.2761]
    measured = channel_stats(open_shards(tmp_path / "seed").split("train").images)
    np.testing.assert_allclose(meta["data_mean"], measured[0])
    np.testing.assert_allclose(meta["data_std"], measured[1])
    assert _convert("fc100", cifar_dir, tmp_path / "data", "--normalization", "data") == 0
    shards = open_shards(tmp_path / "data")
    assert shards.meta["normalization"] == "data"
    np.testing.assert_allclose(shards.mean, measured[0])
    np.testing.assert_allclose(shards.std, measured[1])


def test_seed_normalization_is_refused_for_a_benchmark_the_seed_has_no_constants_for(tmp_path, capsys):
    assert cli(["convert", "synthetic", "--out", str(tmp_path / "s"), "--normalization", "seed",
                "--classes", "2,2,2", "--per-class", "2", "--no-progress"]) == 2
    assert "the seed has constants for mini-imagenet" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
