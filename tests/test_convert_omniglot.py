"""Omniglot from zips and folders in the official layout, and from the real zips in ../shared."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from fsmtl.cli import main as cli
from fsmtl.preprocess.shard_reader import open_shards
from conftest import SHARED

OMNIGLOT = SHARED / "data" / "omniglot"


def _stroke_png(rng):
    """A 105x105 1-bit image as the originals: white background, a black stroke."""
    a = np.ones((105, 105), dtype=bool)
    r = rng.integers(10, 60)
    a[r : r + 30, 20:30] = False  # a vertical bar at a class-independent place
    a[r : r + 10, 20:90] = False  # and a horizontal one: not symmetric under rotation
    buf = io.BytesIO()
    Image.fromarray(a).convert("1").save(buf, format="PNG")
    return buf.getvalue()


def _omniglot_tree(rng, alphabets, chars=2, per_char=3):
    return {
        f"{a}/character{c:02d}/{1000 + c}_{k:02d}.png": _stroke_png(rng)
        for a in alphabets
        for c in range(1, chars + 1)
        for k in range(1, per_char + 1)
    }


@pytest.fixture()
def omniglot_src(tmp_path):
    """images_background.zip (3 alphabets) + an unzipped images_evaluation/ folder (1 alphabet)."""
    rng = np.random.default_rng(0)
    src = tmp_path / "omniglot"
    src.mkdir()
    with zipfile.ZipFile(src / "images_background.zip", "w") as z:
        for name, data in _omniglot_tree(rng, ["Alpha", "Beta", "Gamma"]).items():
            z.writestr(f"images_background/{name}", data)
    for name, data in _omniglot_tree(rng, ["Zeta_(script)"]).items():
        p = src / "images_evaluation" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return src


def test_background_is_train_and_evaluation_is_test_with_bright_ink(omniglot_src, tmp_path):
    args = ["--no-rotations", "--val-alphabets", "0"]
    assert (
        cli(["convert", "omniglot", "--src", str(omniglot_src), "--out", str(tmp_path / "o"), *args]) == 0
    )
    shards = open_shards(tmp_path / "o")
    assert shards.splits == ["train", "test"] and shards.image_shape == (32, 32, 1)
    train, test = shards.split("train"), shards.split("test")
    assert train.classes[:2] == ["Alpha/character01", "Alpha/character02"] and train.n_classes == 6
    assert test.classes == ["Zeta_(script)/character01", "Zeta_(script)/character02"]
    img = np.asarray(train.images[0, ..., 0])
    assert img[0, 0] == 0 and img.max() > 200  # background dark, strokes bright
    assert shards.mean[0] < 0.5


def test_val_alphabets_are_held_out_and_rotations_add_train_classes(omniglot_src, tmp_path):
    args = ["--val-alphabets", "1", "--rotations", "--size", "20"]
    assert (
        cli(
            ["convert", "omniglot", "--src", str(omniglot_src), "--out", str(tmp_path / "o"), *args]
        )
        == 0
    )
    shards = open_shards(tmp_path / "o")
    train, val = shards.split("train"), shards.split("val")
    assert val.classes == ["Gamma/character01", "Gamma/character02"]  # the last alphabet, sorted
    assert train.n_classes == 4 * 4 and train.classes[4] == "Alpha/character01/rot90"
    base = np.asarray(train.images[train.class_rows(0)])
    rot = np.asarray(train.images[train.class_rows(4)])
    np.testing.assert_array_equal(rot, np.rot90(base, k=1, axes=(1, 2)))
    assert shards.image_shape == (20, 20, 1) and shards.split("test").n_classes == 2


def test_mirrors_add_each_train_class_mirror_image_and_its_rotations_as_classes(omniglot_src, tmp_path):
    out = tmp_path / "o"
    args = ["--val-alphabets", "1", "--mirrors", "--size", "20", "--no-progress"]
    assert cli(["convert", "omniglot", "--src", str(omniglot_src), "--out", str(out), *args]) == 0
    shards = open_shards(out)
    train, val = shards.split("train"), shards.split("val")
    n = 4  # Alpha and Beta, two characters each
    assert train.n_classes == 8 * n  # the eight symmetries of the square: mirror x rotations
    assert train.classes[n] == "Alpha/character01/mirror"
    assert train.classes[2 * n + n] == "Alpha/character01/mirror/rot90"
    assert train.categories == [c.split("/")[0] for c in train.classes]  # each stays in its alphabet
    base = np.asarray(train.images[train.class_rows(0)])
    np.testing.assert_array_equal(np.asarray(train.images[train.class_rows(n)]), base[:, :, ::-1])
    np.testing.assert_array_equal(
        np.asarray(train.images[train.class_rows(3 * n)]), np.rot90(base[:, :, ::-1], k=1, axes=(1, 2))
    )
    assert not np.array_equal(base, base[:, :, ::-1])  # the check above can fail: drawings are not symmetric
    assert val.n_classes == 2 and shards.split("test").n_classes == 2  # held-out splits: characters as drawn
    assert json.loads((out / "meta.json").read_text())["converter_options"]["mirrors"] is True
    # the default is off: rotations only
    assert cli(["convert", "omniglot", "--src", str(omniglot_src), "--out", str(tmp_path / "d"), "--no-progress"]) == 0
    assert not any("mirror" in c for c in open_shards(tmp_path / "d").split("train").classes)


def test_a_single_zip_can_be_the_source(omniglot_src, tmp_path):
    src = omniglot_src / "images_background.zip"
    args = ["--val-alphabets", "0", "--test-alphabets", "0"]
    assert cli(["convert", "omniglot", "--src", str(src), "--out", str(tmp_path / "o"), *args]) == 0
    assert open_shards(tmp_path / "o").splits == ["train"]


def test_defaults_hold_out_alphabets_for_val_and_test_and_record_each_class_alphabet(omniglot_src, tmp_path, capsys):
    rng = np.random.default_rng(1)
    src = tmp_path / "bg"
    (src / "images_background").mkdir(parents=True)
    # Delta has 20 characters: preferred as a held-out alphabet (20-way tasks within it are possible)
    for name, data in {**_omniglot_tree(rng, ["Alpha", "Beta", "Gamma", "Eta"]), **_omniglot_tree(rng, ["Delta"], chars=20)}.items():
        p = src / "images_background" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    assert cli(["convert", "omniglot", "--src", str(src), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    shards = open_shards(tmp_path / "o")
    train, val, test = (shards.split(s) for s in ("train", "val", "test"))
    assert sorted(set(test.categories)) == ["Delta", "Gamma"]  # 2 test alphabets: the large one first
    assert val.categories == ["Eta", "Eta"]  # then the next from the end of the sorted names
    assert sorted(set(train.categories)) == ["Alpha", "Beta"]
    assert train.n_classes == 4 * 4  # rotations on by default, each rotated class in its alphabet
    assert train.categories == [c.split("/")[0] for c in train.classes]
    # an evaluation set is the test split: no background alphabet is then held out for test
    assert cli(["convert", "omniglot", "--src", str(omniglot_src), "--out", str(tmp_path / "e"), "--no-progress"]) == 0
    e = open_shards(tmp_path / "e")
    assert e.split("test").categories == ["Zeta_(script)"] * 2 and e.split("val").n_classes == 2
    assert cli(["convert", "omniglot", "--src", str(omniglot_src), "--out", str(tmp_path / "x"),
                "--test-alphabets", "1"]) == 2  # fmt: skip
    assert "has an images_evaluation set, which is the test split" in capsys.readouterr().err
    assert cli(["convert", "omniglot", "--src", str(src), "--out", str(tmp_path / "y"), "--val-alphabets", "2",
                "--test-alphabets", "3"]) == 2  # fmt: skip
    assert "expected fewer than the 5 background alphabets" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_corrupt_zip_and_a_bad_png_exit_2_naming_the_file(omniglot_src, tmp_path, capsys):
    z = omniglot_src / "images_background.zip"
    z.write_bytes(z.read_bytes()[:100])
    assert cli(["convert", "omniglot", "--src", str(z), "--out", str(tmp_path / "o")]) == 2
    assert f"{z}: not a readable zip" in capsys.readouterr().err
    bad = omniglot_src / "images_evaluation" / "Zeta_(script)" / "character01" / "1001_02.png"
    bad.write_bytes(b"\x89PNG garbage")
    src = omniglot_src / "images_evaluation"
    assert cli(["convert", "omniglot", "--src", str(src), "--out", str(tmp_path / "o")]) == 2
    assert f"{bad}: not a readable image" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not OMNIGLOT.is_dir(), reason="../shared/data/omniglot absent")
def test_the_real_omniglot_zips_convert(tmp_path):
    expected = set()
    for zp in sorted(OMNIGLOT.glob("images_*.zip")):
        with zipfile.ZipFile(zp) as z:
            expected |= {"/".join(n.split("/")[1:3]) for n in z.namelist() if n.endswith(".png")}
    rc = cli(
        [
            "convert",
            "omniglot",
            "--src",
            str(OMNIGLOT),
            "--out",
            str(tmp_path / "o"),
            "--val-alphabets",
            "2",
            "--test-alphabets",
            "0",
            "--no-rotations",
            "--no-progress",
        ]
    )
    assert rc == 0
    shards = open_shards(tmp_path / "o")
    train, val = shards.split("train"), shards.split("val")
    assert set(train.classes) | set(val.classes) == expected
    assert all(c.count("/") == 1 for c in train.classes)
    assert len({c.split("/")[0] for c in val.classes}) == 2
    assert val.categories == [c.split("/")[0] for c in val.classes]
    assert train.images.shape[1:] == (32, 32, 1)
    assert 0.02 < shards.mean[0] < 0.4  # sparse bright ink on a dark background
    assert cli(["verify", str(tmp_path / "o")]) == 0


def test_a_zip_member_that_inflates_past_any_image_is_refused_unread(omniglot_src, tmp_path, capsys):
    import resource
    import struct

    # a small zip whose member inflates to 400 MB; its header claims it is tiny, as a crafted one can
    z = omniglot_src / "images_background.zip"
    with zipfile.ZipFile(z, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("images_background/Alpha/character01/bomb.png", b"\0" * (400 << 20))
    assert z.stat().st_size < 2 << 20
    data = bytearray(z.read_bytes())
    with zipfile.ZipFile(z) as zf:
        at = zf.start_dir  # walk the central directory to the member's entry
    while True:
        assert data[at : at + 4] == b"PK\x01\x02"
        n_name, n_extra, n_comment = struct.unpack_from("<HHH", data, at + 28)
        if data[at + 46 : at + 46 + n_name].endswith(b"bomb.png"):
            break
        at += 46 + n_name + n_extra + n_comment
    struct.pack_into("<I", data, at + 24, 1000)  # declared uncompressed size: 1000 bytes
    z.write_bytes(bytes(data))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert cli(["convert", "omniglot", "--src", str(z), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    # a header that lies is caught by the zip's CRC within the declared size; either way refused unread
    assert "bomb.png" in err and ("larger than 8 MB, not an Omniglot PNG" in err or "Bad CRC-32" in err)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert grown_mb < 100, grown_mb  # the 400 MB member was never held (it was, whole, before)
    assert not (tmp_path / "o").exists()


def test_trainval_gives_the_val_classes_the_copies_the_converter_recorded_for_train(omniglot_src, tmp_path):
    from fsmtl.train.config import TrainConfig
    from fsmtl.train.setup import load_data

    out = tmp_path / "o"
    args = ["--val-alphabets", "1", "--mirrors", "--size", "20", "--no-progress"]
    assert cli(["convert", "omniglot", "--src", str(omniglot_src), "--out", str(out), *args]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["class_copies"] == {"train": [["mirror"], ["rot90", "rot180", "rot270"]]}  # held-out splits: none
    data = load_data(TrainConfig(data=str(out), trainval=True, val_split="none"))
    merged, val = data.train, open_shards(out).split("val")
    n_train, n_val = 8 * 4, 2  # Alpha and Beta's 4 characters in their 8 symmetries; Gamma's 2 as drawn
    assert merged.n_classes == 8 * (4 + n_val) and data.meta["n_train_classes"] == merged.n_classes
    assert merged.classes[n_train : n_train + n_val] == val.classes
    assert merged.classes[n_train + 3 * n_val] == "Gamma/character01/mirror/rot90"
    assert merged.categories == [c.split("/")[0] for c in merged.classes]  # copies stay in their alphabet
    assert np.array_equal(np.diff(merged.class_offsets), np.bincount(merged.labels))  # rows grouped by class
    base = np.asarray(val.images[val.class_rows(0)])
    for k, want in ((n_val, base[:, :, ::-1]), (3 * n_val, np.rot90(base[:, :, ::-1], k=1, axes=(1, 2))),
                    (4 * n_val, np.rot90(base, k=2, axes=(1, 2)))):  # fmt: skip
        got = np.asarray(merged.images[merged.class_rows(n_train + k)])
        assert merged.classes[n_train + k].startswith("Gamma/character01/")
        np.testing.assert_array_equal(got, want)
    # without copies recorded (no rotations or mirrors, or shards from before the record) the val
    # classes join as drawn
    plain = tmp_path / "p"
    args = ["--val-alphabets", "1", "--no-rotations", "--no-progress"]
    assert cli(["convert", "omniglot", "--src", str(omniglot_src), "--out", str(plain), *args]) == 0
    assert "class_copies" not in json.loads((plain / "meta.json").read_text())
    assert load_data(TrainConfig(data=str(plain), trainval=True, val_split="none")).train.n_classes == 4 + n_val


def test_a_bad_class_copies_record_is_refused_naming_the_file() -> None:
    from fsmtl.core.errors import FsmtlError
    from fsmtl.preprocess.class_copies import recorded_class_copies

    assert recorded_class_copies({}, "train", "m.json") == []
    assert recorded_class_copies({"class_copies": {"train": [["rot180"]]}}, "val", "m.json") == []
    assert recorded_class_copies({"class_copies": {"train": [["mirror"], ["rot90"]]}}, "train", "m.json") == [
        ["mirror"], ["rot90"]]  # fmt: skip
    for bad in ({"train": [["rot45"]]}, {"train": ["rot90"]}, {"train": [[]]}, ["rot90"], {"train": "rot90"}):
        with pytest.raises(FsmtlError, match=r"d/meta.json: class_copies: expected .* with copies from mirror, rot90"):
            recorded_class_copies({"class_copies": bad}, "train", "d/meta.json")
