"""tiered-ImageNet from small PNG-bytes pickles and label pickles in Ren et al.'s format."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from fsmtl.cli import main as cli
from fsmtl.preprocess.shard_reader import open_shards
from fsmtl.preprocess.splitlists import class_lists, tiered_categories

LISTS = class_lists("tiered-imagenet")
CATS = tiered_categories()


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _write_split(root, split, rng, per_class=1, as_arrays=False, size=84):
    """{split}_images_png.pkl / _labels.pkl; classes listed in shuffled order, images interleaved."""
    classes = list(LISTS[split])
    rng.shuffle(classes)
    cats = sorted({CATS[c] for c in classes})
    specific = np.tile(np.arange(len(classes)), per_class)
    rng.shuffle(specific)
    pixels = rng.integers(0, 256, size=(len(specific), size, size, 3), dtype=np.uint8)
    pngs = [_png(p) for p in pixels]
    if as_arrays:  # Ren et al.'s own files hold cv2.imencode outputs: 1-D uint8 arrays
        pngs = [np.frombuffer(b, np.uint8) for b in pngs]
    labels = {
        "label_specific": specific,
        "label_general": np.array([cats.index(CATS[classes[k]]) for k in specific]),
        "label_specific_str": classes,
        "label_general_str": cats,
    }
    (root / f"{split}_images_png.pkl").write_bytes(pickle.dumps(pngs, protocol=2))
    (root / f"{split}_labels.pkl").write_bytes(pickle.dumps(labels, protocol=2))
    return pixels, specific, classes


@pytest.fixture(scope="module")
def tiered_src(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiered")
    rng = np.random.default_rng(0)
    written = {
        s: _write_split(root, s, rng, as_arrays=(s == "val")) for s in ("train", "val", "test")
    }
    return root, written


def test_tiered_pngs_decode_into_classes_in_split_list_order_with_their_categories(
    tiered_src, tmp_path
):
    root, written = tiered_src
    assert (
        cli(
            [
                "convert",
                "tiered-imagenet",
                "--src",
                str(root),
                "--out",
                str(tmp_path / "o"),
                "--workers",
                "2",
            ]
        )
        == 0
    )
    shards = open_shards(tmp_path / "o")
    # the seed's Lee19 normalisation (mini-ImageNet's, which it uses for tiered too), not this tiny sample's statistics
    np.testing.assert_allclose(shards.mean, np.array([120.39586422, 115.59361427, 104.54012653]) / 255)
    np.testing.assert_allclose(shards.std, np.array([70.68188272, 68.27635443, 72.54505529]) / 255)
    for split in ("train", "val", "test"):
        s = shards.split(split)
        assert s.classes == LISTS[split]
        assert s.categories == [CATS[c] for c in LISTS[split]]
        pixels, specific, classes = written[split]
        c = LISTS[split][5]
        np.testing.assert_array_equal(
            np.asarray(s.images[s.class_rows(5)]), pixels[specific == classes.index(c)]
        )
    assert [s.n_classes for s in map(shards.split, ("train", "val", "test"))] == [351, 97, 160]
    assert len(shards.meta["sources"]) == 6


def _copy(root, dst):
    dst.mkdir()
    for p in root.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_a_corrupt_png_is_named_by_file_and_index(tiered_src, tmp_path, capsys):
    src = _copy(tiered_src[0], tmp_path / "src")
    p = src / "test_images_png.pkl"
    pngs = pickle.loads(p.read_bytes())
    pngs[7] = pngs[7][:30]
    p.write_bytes(pickle.dumps(pngs))
    assert cli(["convert", "tiered-imagenet", "--src", str(src), "--out", str(tmp_path / "o")]) == 2
    assert f"{p}[7]: not a readable image" in capsys.readouterr().err
    assert sorted(x.name for x in tmp_path.iterdir()) == ["src"]


def test_labels_that_do_not_match_the_image_count_are_rejected(tiered_src, tmp_path, capsys):
    src = _copy(tiered_src[0], tmp_path / "src")
    p = src / "val_images_png.pkl"
    p.write_bytes(pickle.dumps(pickle.loads(p.read_bytes())[:-1]))
    assert cli(["convert", "tiered-imagenet", "--src", str(src), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "val_labels.pkl: expected 'label_specific' of shape (96,)" in err


def test_wrong_sized_pngs_are_an_error_unless_a_size_is_asked_for(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    _write_split(src, "test", np.random.default_rng(1), size=40)
    assert cli(["convert", "tiered-imagenet", "--src", str(src), "--out", str(tmp_path / "o")]) == 2
    assert "expected a 84x84 image, got 40x40" in capsys.readouterr().err
    assert (
        cli(
            [
                "convert",
                "tiered-imagenet",
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
    assert open_shards(tmp_path / "o").splits == ["test"]
