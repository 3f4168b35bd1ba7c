"""imagefolder: any class-per-directory tree, split by a user file or by seeded class ratios."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fsmtl.cli import main as cli
from fsmtl.core.errors import FsmtlError
from fsmtl.preprocess.convert_imagefolder import read_split_file, split_by_ratios
from fsmtl.preprocess.shard_reader import open_shards


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


def _png(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_16bit_images_are_scaled_not_clipped_and_transparency_is_composited_on_white():
    from PIL import Image

    from fsmtl.preprocess.imaging import decode_image

    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
    got = decode_image(_png(Image.fromarray(ramp)), "ramp16.png", channels=1)[..., 0]
    np.testing.assert_allclose(got.astype(float), np.rint(ramp / 257.0), atol=1)
    glyph = np.zeros((32, 32, 4), dtype=np.uint8)  # black ink, transparent background
    glyph[8:24, 14:18, 3] = 255
    out = decode_image(_png(Image.fromarray(glyph, "RGBA")), "glyph.png")
    assert out[0, 0].tolist() == [255, 255, 255] and out[16, 15].tolist() == [0, 0, 0]


def test_exif_orientation_is_applied_for_imagefolder_only():
    import io

    from PIL import Image

    from fsmtl.preprocess.imaging import decode_image

    img = np.zeros((20, 40, 3), dtype=np.uint8)
    img[:, :20] = 255  # left half white, stored landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", exif=exif.tobytes())
    assert decode_image(buf.getvalue(), "raw.png").shape == (20, 40, 3)
    upright = decode_image(buf.getvalue(), "photo.png", exif=True)
    assert upright.shape == (40, 20, 3) and upright[:20].mean() > 200 and upright[20:].mean() < 50


def test_an_unknown_format_is_named_without_python_internals():
    import pytest

    from fsmtl.core.errors import FsmtlError
    from fsmtl.preprocess.imaging import decode_image

    with pytest.raises(FsmtlError, match=r"x.jpg: not a readable image \(unknown or corrupt image format\)$"):
        decode_image(b"definitely not an image", "x.jpg")


def test_hidden_files_empty_and_nested_folders_are_skipped_with_warnings(tree, tmp_path, capsys):
    (tree / "class_0" / "._a.jpg").write_bytes(b"macOS resource fork, not an image")
    (tree / "empty_class").mkdir()
    (tree / "class_1" / "more").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tree / "class_1" / "more" / "x.jpg")
    assert cli(["convert", "imagefolder", "--src", str(tree), "--out", str(tmp_path / "o"), "--size", "16"]) == 0
    err = capsys.readouterr().err
    assert "empty_class: no images" in err and "sub-folder(s) inside class folders" in err
    shards = open_shards(tmp_path / "o")
    assert sum(shards.meta["splits"][s]["n_classes"] for s in shards.splits) == 10


def test_a_symlinked_duplicate_class_folder_is_refused(tree, tmp_path):
    (tree / "class_0_again").symlink_to(tree / "class_0", target_is_directory=True)
    with pytest.raises(FsmtlError, match="same folder as"):
        from fsmtl.preprocess.convert_imagefolder import _scan

        _scan(tree)


def test_split_files_with_a_bom_other_unicode_forms_and_hashes_in_names(tmp_path):
    import unicodedata

    nfd = unicodedata.normalize("NFD", "café")
    (tmp_path / "s.txt").write_bytes(("\ufeffC#,train\n" + nfd + ",val  # a note\n# comment\ndog,test\n").encode("utf-8"))
    assert read_split_file(tmp_path / "s.txt") == {"C#": "train", unicodedata.normalize("NFC", "café"): "val", "dog": "test"}
    (tmp_path / "latin1.txt").write_bytes("café,train\n".encode("latin-1"))
    with pytest.raises(FsmtlError, match="expected UTF-8 text"):
        read_split_file(tmp_path / "latin1.txt")


def test_a_failing_fill_does_not_decode_the_rest_of_the_split():
    import threading
    import time

    from fsmtl.preprocess.imaging import parallel_fill

    calls = []
    lock = threading.Lock()

    def load(i):
        with lock:
            calls.append(i)
        if i == 0:
            raise FsmtlError("img 0: corrupt")
        time.sleep(0.001)
        return np.zeros((2, 2, 1), dtype=np.uint8)

    out = np.zeros((20000, 2, 2, 1), dtype=np.uint8)
    with pytest.raises(FsmtlError, match="img 0"):
        parallel_fill(out, load, workers=2, desc="t", progress=False)
    assert len(calls) < 5000  # the queued chunks were dropped, not decoded


def test_an_image_symlinked_into_two_classes_is_warned_about(tree, tmp_path, capsys):
    (tree / "class_1" / "borrowed.jpg").symlink_to(tree / "class_0" / "a.jpg")
    from fsmtl.preprocess.convert_imagefolder import _scan

    _scan(tree)
    assert "same file in two classes" in capsys.readouterr().err


def test_a_missing_src_is_reported_as_not_found(tmp_path, capsys):
    missing = tmp_path / "no_such_folder"
    assert cli(["convert", "imagefolder", "--src", str(missing), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: not found; expected a folder with one sub-folder of images per class" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_images_directly_in_src_must_be_in_one_sub_folder_per_class(tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("a.jpg", "b.png"):
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(flat / name)
    assert cli(["convert", "imagefolder", "--src", str(flat), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{flat}: holds 2 image file(s) directly (e.g. a.jpg)" in err
    assert "the images must be in one sub-folder per class" in err and "found none" not in err


def test_images_beside_class_folders_are_warned_about_and_not_read(tree, tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tree / "stray.jpg")
    assert cli(["convert", "imagefolder", "--src", str(tree), "--out", str(tmp_path / "o"), "--size", "16"]) == 0
    assert "1 image file(s) directly in" in capsys.readouterr().err
    shards = open_shards(tmp_path / "o")
    assert sum(shards.meta["splits"][s]["n_images"] for s in shards.splits) == 30


def test_group_folders_record_each_class_group_and_tasks_can_stay_within_one(tmp_path, capsys):
    rng = np.random.default_rng(3)
    root = tmp_path / "grouped"
    for g, n in (("animals", 4), ("tools", 3)):
        for c in range(n):
            d = root / g / f"c{c}"
            d.mkdir(parents=True)
            for k in range(3):
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(d / f"{k}.png")
    (root / "empty_group").mkdir()
    lines = [f"animals/c{c},train" for c in range(4)] + [f"tools/c{c},test" for c in range(3)]
    (tmp_path / "split.txt").write_text("\n".join(lines) + "\n")
    argv = ["convert", "imagefolder", "--src", str(root), "--out", str(tmp_path / "o"), "--size", "16",
            "--group-folders", "--split-file", str(tmp_path / "split.txt"), "--no-progress"]  # fmt: skip
    assert cli(argv) == 0
    assert "empty_group: no class folders inside: not a group, skipped" in capsys.readouterr().err
    shards = open_shards(tmp_path / "o")
    train, test = shards.split("train"), shards.split("test")
    assert train.classes == [f"animals/c{c}" for c in range(4)] and train.categories == ["animals"] * 4
    assert test.categories == ["tools"] * 3
    # without the flag the same tree is refused as what it is: group folders are not class folders
    assert cli(["convert", "imagefolder", "--src", str(root), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "expected class sub-folders holding images, found none" in capsys.readouterr().err
    assert cli(["convert", "synthetic", "--out", str(tmp_path / "y"), "--group-folders"]) == 2
    assert "--group-folders: only for imagefolder" in capsys.readouterr().err
