"""imagefolder: any class-per-directory tree, split by a user file or by seeded class ratios."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fsmtl.cli import main as cli
from fsmtl.errors import FsmtlError
from preprocess.convert_imagefolder import read_split_file, split_by_ratios
from preprocess.shards import open_shards


@pytest.fixture()
def tree(tmp_path):
    """10 classes x 3 images of mixed sizes, modes and formats."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tree"
    for c in range(10):
        d = root / f"class_{c}"
        d.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(d / "a.jpg")
        Image.fromarray(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8), "RGBA").save(d / "b.png")
        Image.fromarray(rng.integers(0, 256, (17, 17), dtype=np.uint8), "L").save(d / "c.PNG")
        (d / "notes.txt").write_text("ignored")
    return root


def test_ratio_split_is_seeded_covers_every_class_once_and_resizes(tree, tmp_path):
    base = [
        "convert",
        "imagefolder",
        "--src",
        str(tree),
        "--size",
        "24",
        "--ratios",
        "0.6,0.2,0.2",
        "--seed",
        "5",
    ]
    assert cli([*base, "--out", str(tmp_path / "a")]) == 0
    assert cli([*base, "--out", str(tmp_path / "b")]) == 0
    a, b = open_shards(tmp_path / "a"), open_shards(tmp_path / "b")
    classes = {s: a.split(s).classes for s in a.splits}
    assert classes == {s: b.split(s).classes for s in b.splits}
    assert [len(classes[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert sorted(sum(classes.values(), [])) == sorted(f"class_{c}" for c in range(10))
    assert a.image_shape == (24, 24, 3) and a.split("train").class_counts.tolist() == [3] * 6


def test_split_file_assigns_classes_and_grey_output_has_one_channel(tree, tmp_path):
    lines = [f"class_{c},{'train' if c < 5 else 'test'}" for c in range(10)]
    (tmp_path / "split.txt").write_text("# class,split\n" + "\n".join(lines) + "\n")
    args = ["--split-file", str(tmp_path / "split.txt"), "--channels", "1"]
    assert (
        cli(["convert", "imagefolder", "--src", str(tree), "--out", str(tmp_path / "o"), *args])
        == 0
    )
    shards = open_shards(tmp_path / "o")
    assert shards.splits == ["train", "test"] and shards.image_shape == (84, 84, 1)
    assert shards.split("test").classes == [f"class_{c}" for c in range(5, 10)]


def test_a_class_missing_from_the_split_file_is_named(tree, tmp_path, capsys):
    (tmp_path / "split.txt").write_text(
        "\n".join(f"class_{c},train" for c in range(9)) + "\nghost,val\n"
    )
    rc = cli(
        [
            "convert",
            "imagefolder",
            "--src",
            str(tree),
            "--out",
            str(tmp_path / "o"),
            "--split-file",
            str(tmp_path / "split.txt"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "missing 1 (ghost)" in err and "extra 1 (class_9)" in err


def test_split_file_lines_are_checked(tmp_path):
    p = tmp_path / "s.txt"
    p.write_text("a,train\nb,holdout\n")
    with pytest.raises(FsmtlError, match=":2: expected '<class>,<train|val|test>'"):
        read_split_file(p)


def test_ratio_split_gives_small_splits_at_least_one_class():
    got = split_by_ratios([f"c{i}" for i in range(5)], (0.9, 0.05, 0.05), seed=0)
    assert sorted(got.values()) == ["test", "train", "train", "train", "val"]
