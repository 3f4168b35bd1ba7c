"""``fsmtl convert`` / ``fsmtl verify`` end to end: synthetic data, overwrite rules, extra formats."""

from __future__ import annotations

import sys
import types

import numpy as np

from conftest import optional_import
from fsmtl.cli import main as cli
from fsmtl.preprocess.shard_reader import load_split, open_shards
from fsmtl.preprocess.synthetic import SyntheticConfig, generate_split

SMALL = ["--size", "16", "--classes", "4,2,3", "--per-class", "5", "--no-progress"]


def test_convert_synthetic_then_load_train_matches_the_generator(tmp_path, capsys):
    assert cli(["convert", "synthetic", "--out", str(tmp_path / "s"), *SMALL, "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "done in" in out  # the summary table
    train = load_split(tmp_path / "s", "train")
    images, labels, classes = generate_split(
        SyntheticConfig(image_size=16, classes=(4, 2, 3), per_class=5, seed=7), "train"
    )
    np.testing.assert_array_equal(np.asarray(train.images), images)
    assert train.labels.tolist() == labels.tolist() and train.classes == classes
    meta = open_shards(tmp_path / "s").meta
    assert meta["converter_options"]["seed"] == 7 and meta["formats"] == ["npy"]


def test_verify_exits_1_and_names_the_file_with_a_flipped_byte(tmp_path, capsys):
    assert cli(["convert", "synthetic", "--out", str(tmp_path / "s"), *SMALL]) == 0
    capsys.readouterr()
    assert cli(["verify", str(tmp_path / "s")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "synthetic, 16x16x3 uint8, formats npy" in lines[0]
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[1:] if ln.split()[0] in ("train", "val", "test")}
    assert rows == {"train": ["20", "4", "5"], "val": ["10", "2", "5"], "test": ["15", "3", "5"]}
    p = tmp_path / "s" / "val" / "images.npy"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    capsys.readouterr()
    assert cli(["verify", str(tmp_path / "s")]) == 1
    out = capsys.readouterr().out
    assert str(p) in out and "train/images.npy" not in out


def test_existing_output_is_refused_without_force_and_replaced_with_it(tmp_path, capsys):
    out = tmp_path / "s"
    assert cli(["convert", "synthetic", "--out", str(out), *SMALL]) == 0
    assert cli(["convert", "synthetic", "--out", str(out), *SMALL, "--seed", "1"]) == 2
    assert "already exists (pass --force" in capsys.readouterr().err
    assert cli(["convert", "synthetic", "--out", str(out), *SMALL, "--seed", "1", "--force"]) == 0
    assert open_shards(out).meta["converter_options"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_missing_src_unknown_format_and_bad_flags_exit_2(tmp_path, capsys):
    assert cli(["convert", "cifar-fs", "--out", str(tmp_path / "o")]) == 2
    assert "--src: required" in capsys.readouterr().err
    assert (
        cli(["convert", "synthetic", "--out", str(tmp_path / "o"), "--format", "npy,tfrecord"]) == 2
    )
    assert cli(["convert", "synthetic", "--out", str(tmp_path / "o"), "--classes", "a,b"]) == 2
    assert (
        cli(
            [
                "convert",
                "cifar-fs",
                "--src",
                str(tmp_path / "nothing"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "nothing: not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_backend_library_names_the_extra_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "fsmtl.preprocess.export_ffcv", None)  # import raises ImportError
    assert (
        cli(["convert", "synthetic", "--out", str(tmp_path / "o"), *SMALL, "--format", "npy,ffcv"])
        == 2
    )
    err = capsys.readouterr().err
    assert "pip install 'fsmtl[ffcv]'" in err and "ffcv" in err
    assert not (tmp_path / "o").exists()


def test_extra_formats_are_written_per_split_and_hashed_into_meta(tmp_path, monkeypatch):
    # stand-ins with the exporters' signatures (the real ones are tested by the pipelines' tests)
    def export_split_ffcv(split, path, progress=True):
        path.write_bytes(np.asarray(split.images).tobytes()[:64])

    def export_split_dali(split, out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        files = [out_dir / "images.bin", out_dir / "index.txt"]
        files[0].write_bytes(split.labels.tobytes())
        files[1].write_text(f"{split.name} {len(split.labels)}\n")
        return files

    monkeypatch.setitem(
        sys.modules,
        "fsmtl.preprocess.export_ffcv",
        types.SimpleNamespace(export_split_ffcv=export_split_ffcv),
    )
    monkeypatch.setitem(
        sys.modules,
        "fsmtl.preprocess.export_dali",
        types.SimpleNamespace(export_split_dali=export_split_dali),
    )
    assert (
        cli(
            [
                "convert",
                "synthetic",
                "--out",
                str(tmp_path / "o"),
                *SMALL,
                "--format",
                "npy,ffcv,dali",
            ]
        )
        == 0
    )
    meta = open_shards(tmp_path / "o").meta
    for split in ("train", "val", "test"):
        assert f"{split}/data.beton" in meta["files"]
        assert (
            f"{split}/dali/images.bin" in meta["files"]
            and f"{split}/dali/index.txt" in meta["files"]
        )
    assert meta["formats"] == ["npy", "ffcv", "dali"]
    assert cli(["verify", str(tmp_path / "o")]) == 0


def test_real_ffcv_and_dali_exports_are_written_and_verified(tmp_path):
    optional_import("ffcv")
    optional_import("nvidia.dali")
    out = tmp_path / "o"
    assert (
        cli(["convert", "synthetic", "--out", str(out), *SMALL, "--format", "npy,ffcv,dali"]) == 0
    )
    files = open_shards(out).meta["files"]
    assert all(f"{s}/data.beton" in files for s in ("train", "val", "test"))
    assert any(f.startswith("train/dali/") for f in files)
    assert cli(["verify", str(out)]) == 0


def test_an_output_path_under_a_file_is_a_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert cli(["convert", "synthetic", "--out", str(blocker / "x"), *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(blocker) in err and "Traceback" not in err
    assert blocker.read_text() == ""


def test_a_reader_that_leaves_the_pipe_early_ends_quietly():
    import subprocess

    code = "from fsmtl.core.cli import run_stage_main\nimport sys\nsys.exit(run_stage_main(lambda a: print('x' * 10**7), []))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `| head`: the reader is gone before the writer is done
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and "Traceback" not in err



def test_verify_catches_a_meta_json_that_no_longer_describes_the_arrays(tmp_path, capsys):
    import json

    assert cli(["convert", "synthetic", "--out", str(tmp_path / "s"), *SMALL]) == 0
    meta_path = tmp_path / "s" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["image_shape"] = [28, 28, 3]
    meta_path.write_text(json.dumps(meta))
    capsys.readouterr()
    # meta.json's own sha256 (meta.sha256, written with it) catches the edit at once
    assert cli(["verify", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert f"{meta_path}: changed or corrupt (its sha256 differs from meta.sha256)" in err
    # shards from before meta.sha256: the arrays no longer match what meta.json says of them
    (tmp_path / "s" / "meta.sha256").unlink()
    assert cli(["verify", str(tmp_path / "s")]) == 1
    assert "images.npy" in capsys.readouterr().out


def test_a_file_that_is_not_npy_is_named_as_such(tmp_path):
    import pytest

    from fsmtl.core.errors import FsmtlError

    assert cli(["convert", "synthetic", "--out", str(tmp_path / "s"), *SMALL]) == 0
    (tmp_path / "s" / "test" / "images.npy").write_bytes(b"garbage")
    with pytest.raises(FsmtlError, match="not a .npy file"):
        load_split(tmp_path / "s", "test")


def test_force_replaces_only_a_shard_directory_and_never_the_source(tmp_path, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("important")
    assert cli(["convert", "synthetic", "--out", str(precious), "--force", *SMALL]) == 2
    assert "not fsmtl shards" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "important" and not list(tmp_path.glob(".precious.tmp-*"))
    src = tmp_path / "images"
    (src / "cat").mkdir(parents=True)
    for out in (src, tmp_path, src / "shards"):  # the source itself, a folder holding it, a folder inside it
        assert cli(["convert", "imagefolder", "--src", str(src), "--out", str(out), "--force"]) == 2
        assert "outside --src" in capsys.readouterr().err
    assert (src / "cat").is_dir() and (precious / "notes.txt").exists()


def test_temporaries_of_a_killed_conversion_are_cleaned_up_by_the_next(tmp_path):
    from fsmtl.preprocess.shard_temporaries import _host

    stale = tmp_path / f".s.tmp-{_host()}-999999999-1"  # no process on this host has this pid
    other_host = tmp_path / ".s.tmp-some_other_node-999999999-1"  # maybe alive over there: kept
    for d in (stale, other_host):
        d.mkdir()
        (d / "images.npy").write_bytes(b"half written")
    assert cli(["convert", "synthetic", "--out", str(tmp_path / "s"), *SMALL]) == 0
    assert not stale.exists() and other_host.exists()
    assert open_shards(tmp_path / "s").meta["benchmark"] == "synthetic"


def test_force_keeps_a_shard_directory_that_holds_a_users_file_or_the_working_directory(tmp_path, capsys, monkeypatch):
    out = tmp_path / "s"
    assert cli(["convert", "synthetic", "--out", str(out), *SMALL]) == 0
    (out / "mynotes.txt").write_text("mine")
    assert cli(["convert", "synthetic", "--out", str(out), "--force", *SMALL]) == 2
    assert "mynotes.txt: not written by fsmtl convert" in capsys.readouterr().err
    (out / "mynotes.txt").unlink()
    monkeypatch.chdir(out)
    assert cli(["convert", "synthetic", "--out", ".", "--force", *SMALL]) == 2
    assert "current directory" in capsys.readouterr().err
    assert open_shards(out).meta["benchmark"] == "synthetic"


def test_sigterm_during_a_conversion_leaves_nothing_behind(tmp_path):
    import os
    import signal
    import subprocess
    import time

    out = tmp_path / "big"
    proc = subprocess.Popen([sys.executable, "-m", "fsmtl.cli", "convert", "synthetic", "--out", str(out), "--size", "84",
                             "--classes", "64,16,20", "--per-class", "600", "--no-progress", "--workers", "1"],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    for _ in range(200):  # wait until the conversion has started writing
        if list(tmp_path.glob(".big.tmp-*")):
            break
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143 and "terminated" in err
    assert not out.exists() and not list(tmp_path.glob(".big.tmp-*"))


def _config_error(**kwargs) -> str:
    import pytest

    from fsmtl.core.errors import FsmtlError
    from fsmtl.preprocess.config import PreprocessConfig

    with pytest.raises(FsmtlError) as e:
        PreprocessConfig(**kwargs)
    return str(e.value)


def test_a_benchmark_specific_option_for_another_benchmark_names_the_flag_and_its_benchmarks(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    cases = [  # (benchmark, field, value, message)
        ("synthetic", "ratios", (0.5, 0.25, 0.25), "--ratios: only for imagefolder, not synthetic"),
        ("synthetic", "split_file", tmp_path / "s.txt", "--split-file: only for imagefolder, not synthetic"),
        ("synthetic", "val_alphabets", 2, "--val-alphabets: only for omniglot, not synthetic"),
        ("cifar-fs", "channels", 1, "--channels: only for imagefolder and synthetic, not cifar-fs"),
        ("mini-imagenet", "seed", 3, "--seed: only for imagefolder and synthetic, not mini-imagenet"),
        ("omniglot", "per_class", 5, "--per-class: only for synthetic, not omniglot"),
        ("imagefolder", "classes", (4, 2, 2), "--classes: only for synthetic, not imagefolder"),
        ("fc100", "difficulty", 0.5, "--difficulty: only for synthetic, not fc100"),
        ("imagefolder", "rotations", True, "--rotations: only for omniglot, not imagefolder"),
        ("synthetic", "mirrors", True, "--mirrors: only for omniglot, not synthetic"),
    ]
    for benchmark, field, value, message in cases:
        given_src = None if benchmark == "synthetic" else src
        assert _config_error(benchmark=benchmark, out=tmp_path / "o", src=given_src, **{field: value}) == message
    # the same through the CLI, where --ratios is parsed as None when left out
    assert cli(["convert", "synthetic", "--out", str(tmp_path / "o"), *SMALL, "--ratios", "0.5,0.25,0.25"]) == 2
    assert "--ratios: only for imagefolder, not synthetic" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_options_left_at_their_defaults_are_accepted_by_every_benchmark(tmp_path):
    from fsmtl.preprocess.config import BENCHMARKS, PreprocessConfig

    for benchmark in BENCHMARKS:
        src = None if benchmark == "synthetic" else tmp_path
        cfg = PreprocessConfig(benchmark, tmp_path.parent / "o", src=src, classes=[64, 16, 20])  # a list is fine
        assert cfg.benchmark == benchmark


def test_a_negative_difficulty_is_refused(tmp_path):
    assert _config_error(benchmark="synthetic", out=tmp_path / "o", difficulty=-1.0) == (
        "--difficulty: expected a number >= 0 (0 = clean prototypes), got -1.0"
    )
    assert "--difficulty: expected a number >= 0" in _config_error(benchmark="synthetic", out=tmp_path / "o",
                                                                   difficulty=float("nan"))  # fmt: skip


def test_size_below_the_synthetic_generators_limit_is_refused_by_the_config_in_one_message(tmp_path, capsys):
    from fsmtl.preprocess.synthetic import MIN_IMAGE_SIZE

    assert _config_error(benchmark="synthetic", out=tmp_path / "o", size=MIN_IMAGE_SIZE - 1) == (
        f"--size: expected {MIN_IMAGE_SIZE}..1024, got {MIN_IMAGE_SIZE - 1}"
    )
    assert cli(["convert", "synthetic", "--out", str(tmp_path / "o"), *SMALL, "--size", "4"]) == 2
    assert capsys.readouterr().err == f"fsmtl: error: --size: expected {MIN_IMAGE_SIZE}..1024, got 4\n"
    assert cli(["convert", "synthetic", "--out", str(tmp_path / "o"), *SMALL, "--size", str(MIN_IMAGE_SIZE)]) == 0
    assert open_shards(tmp_path / "o").image_shape == (MIN_IMAGE_SIZE, MIN_IMAGE_SIZE, 3)


def test_synthetic_with_src_is_told_to_leave_src_out_even_when_out_lies_inside_it(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    assert cli(["convert", "synthetic", "--src", str(src), "--out", str(src / "o"), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "leave --src out" in err and "outside --src" not in err


def test_format_without_npy_adds_npy_as_the_help_says(tmp_path, monkeypatch):
    from fsmtl.preprocess.config import PreprocessConfig

    assert PreprocessConfig("synthetic", tmp_path / "o", formats=("ffcv",)).formats == ("npy", "ffcv")
    assert PreprocessConfig("synthetic", tmp_path / "o", formats=("dali", "npy", "dali")).formats == ("npy", "dali")

    def export_split_ffcv(split, path, progress=True):  # a stand-in: the real one is tested elsewhere
        path.write_bytes(b"beton")

    monkeypatch.setitem(sys.modules, "fsmtl.preprocess.export_ffcv", types.SimpleNamespace(export_split_ffcv=export_split_ffcv))
    assert cli(["convert", "synthetic", "--out", str(tmp_path / "o"), *SMALL, "--format", "ffcv"]) == 0
    meta = open_shards(tmp_path / "o").meta
    assert meta["formats"] == ["npy", "ffcv"] and "train/images.npy" in meta["files"] and "train/data.beton" in meta["files"]


def test_an_unwritable_out_is_named_as_given_not_as_the_hidden_temporary(capsys):
    import os

    import pytest

    if not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux /proc")
    assert cli(["convert", "synthetic", "--out", "/proc/fsmtl-out", *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fsmtl: error: /proc/fsmtl-out: cannot write the output there") and ".tmp-" not in err
