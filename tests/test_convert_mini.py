"""mini-ImageNet from the cache pickles and from raw JPEG folders, written small by the tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fsmtl.cli import main as cli
from fsmtl.core.errors import FsmtlError
from fsmtl.preprocess.convert_mini import select_ravi_images
from fsmtl.preprocess.shard_reader import open_shards
from fsmtl.preprocess.splitlists import class_lists

LISTS = class_lists("mini-imagenet")
CACHE = {"train": "train", "val": "validation", "test": "test"}


def _write_cache(root: Path, per_class=2, seed=0, drop=None):
    """mini-imagenet-cache-*.pkl with shuffled class_dict indices; returns {split: (images, dict)}."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, name in CACHE.items():
        classes = [c for c in LISTS[split] if c != drop]
        n = len(classes) * per_class
        images = rng.integers(0, 256, size=(n, 84, 84, 3), dtype=np.uint8)
        perm = rng.permutation(n)
        class_dict = {
            c: perm[k * per_class : (k + 1) * per_class].tolist() for k, c in enumerate(classes)
        }
        (root / f"mini-imagenet-cache-{name}.pkl").write_bytes(
            pickle.dumps({"image_data": images, "class_dict": class_dict}, protocol=4)
        )
        written[split] = (images, class_dict)
    return written


def test_cache_pickles_convert_with_rows_grouped_by_class_in_split_list_order(tmp_path):
    (tmp_path / "src").mkdir()
    written = _write_cache(tmp_path / "src")
    assert (
        cli(
            [
                "convert",
                "mini-imagenet",
                "--src",
                str(tmp_path / "src"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    shards = open_shards(tmp_path / "o")
    assert shards.image_shape == (84, 84, 3)
    # the seed's Lee19 normalisation (its mini_imagenet_benchmark.py), not this tiny sample's statistics
    np.testing.assert_allclose(shards.mean, np.array([120.39586422, 115.59361427, 104.54012653]) / 255)
    np.testing.assert_allclose(shards.std, np.array([70.68188272, 68.27635443, 72.54505529]) / 255)
    for split in ("train", "val", "test"):
        s = shards.split(split)
        images, class_dict = written[split]
        assert s.classes == LISTS[split] and s.class_counts.tolist() == [2] * len(LISTS[split])
        c = s.classes[-1]
        np.testing.assert_array_equal(
            np.asarray(s.images[s.class_rows(s.n_classes - 1)]), images[class_dict[c]]
        )
    assert len(shards.meta["sources"]) == 3


def test_cache_with_a_missing_class_names_the_file_and_the_class(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    _write_cache(tmp_path / "src", drop=LISTS["val"][3])
    rc = cli(
        ["convert", "mini-imagenet", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert (
        rc == 2
        and "mini-imagenet-cache-validation.pkl" in err
        and LISTS["val"][3] in err
        and "missing 1" in err
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_cache_with_wrong_image_shape_is_rejected(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    _write_cache(tmp_path / "src")
    p = tmp_path / "src" / "mini-imagenet-cache-test.pkl"
    p.write_bytes(pickle.dumps({"image_data": np.zeros((4, 84, 84), np.uint8), "class_dict": {}}))
    rc = cli(
        ["convert", "mini-imagenet", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "o")]
    )
    assert (
        rc == 2
        and "mini-imagenet-cache-test.pkl: expected 'image_data' uint8 [N, H, W, 3]"
        in capsys.readouterr().err
    )


def _jpeg(path: Path, rng, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(
        path, quality=90
    )


def test_ravi_images_folder_with_its_csvs_is_resized_to_84(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "mini"
    for split in ("train", "val", "test"):
        lines = ["filename,label"]
        for c in LISTS[split]:
            for k in (1, 2):
                name = f"{c}{k:08d}.jpg"
                _jpeg(src / "images" / name, rng)
                lines.append(f"{name},{c}")
        (src / f"{split}.csv").write_text("\n".join(lines) + "\n")
    assert (
        cli(
            [
                "convert",
                "mini-imagenet",
                "--src",
                str(src),
                "--out",
                str(tmp_path / "o"),
                "--workers",
                "2",
            ]
        )
        == 0
    )
    s = open_shards(tmp_path / "o").split("train")
    assert s.images.shape == (128, 84, 84, 3) and s.classes == LISTS["train"]


def test_wnid_folders_use_the_shipped_split_lists_and_a_bad_jpeg_is_named(tmp_path, capsys):
    rng = np.random.default_rng(2)
    src = tmp_path / "raw"
    for split in ("train", "val", "test"):
        for c in LISTS[split]:
            for k in ("a", "b"):
                _jpeg(src / c / f"{k}.JPEG", rng, size=(20, 16))
    _jpeg(src / "n99999999" / "x.JPEG", rng)  # an extra class folder is ignored
    assert (
        cli(
            [
                "convert",
                "mini-imagenet",
                "--src",
                str(src),
                "--out",
                str(tmp_path / "o"),
                "--size",
                "32",
            ]
        )
        == 0
    )
    shards = open_shards(tmp_path / "o")
    assert (
        shards.image_shape == (32, 32, 3) and shards.split("test").class_counts.tolist() == [2] * 20
    )
    bad = src / LISTS["val"][0] / "b.JPEG"
    bad.write_bytes(b"not a jpeg at all")
    rc = cli(["convert", "mini-imagenet", "--src", str(src), "--out", str(tmp_path / "o2")])
    assert rc == 2 and f"{bad}: not a readable image" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_ilsvrc_named_files_are_picked_by_the_ravi_index_after_sorting_by_numeric_id(tmp_path):
    files = [tmp_path / f"n01234567_{i}.JPEG" for i in (100, 9, 20, 3)]
    picked = select_ravi_images(files, [1, 3], tmp_path)
    assert [p.name for p in picked] == ["n01234567_3.JPEG", "n01234567_20.JPEG"]
    with pytest.raises(FsmtlError, match="expected at least 7 ILSVRC images, found 4"):
        select_ravi_images(files, [7], tmp_path)


@pytest.mark.parametrize("layout", ["class folders not named by wnid", "loose images", "empty"])
def test_a_folder_in_none_of_the_three_layouts_is_named_with_the_layouts_it_accepts(tmp_path, capsys, layout):
    rng = np.random.default_rng(3)
    src = tmp_path / "src"
    src.mkdir()
    if layout == "class folders not named by wnid":
        for c in ("cat", "dog"):
            _jpeg(src / c / "a.jpg", rng)
    elif layout == "loose images":
        _jpeg(src / "photo.jpg", rng)
    rc = cli(["convert", "mini-imagenet", "--src", str(src), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"fsmtl: error: {src}: not a mini-ImageNet layout") and err.count("\n") == 1
    for accepted in ("mini-imagenet-cache-{train,validation,test}.pkl", "images/*.jpg with train.csv", "<wnid>/*.JPEG"):
        assert accepted in err
    assert "missing" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_a_missing_image_in_ravis_layout_names_the_image_and_the_csv(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)  # Ravi's layout, but the images were not unpacked
    rc = cli(["convert", "mini-imagenet", "--src", str(src), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    first = src / "images" / "n0153282900000005.jpg"
    assert rc == 2 and f"{first}: missing; expected the image preprocess/splits/mini-imagenet/ravi_csv/train.csv lists" in err
