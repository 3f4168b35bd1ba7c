"""The benchmarks refuse bad inputs up front with one-line errors, and keep finished work when stopped."""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from fsmtl.benchmarks import bench_algorithms, bench_all, bench_pipeline, bench_traffic, bench_train
from fsmtl.benchmarks.common import check_writable, device_name, image_sizes, parse_names, write_results
from fsmtl.core.cli import run_stage_main
from fsmtl.core.errors import FsmtlError

TINY_ALGO = ["--ways", "2", "--shots", "1", "--queries", "1", "--tasks", "1", "--steps", "1", "--runs", "1",
             "--warmup", "0", "--precision", "fp32", "--device", "cpu"]  # fmt: skip
TINY_PIPE = ["--backends", "torch", "--tasks", "2", "--ways", "3", "--shots", "2", "--queries", "2", "--runs", "1",
             "--warmup", "0", "--batches", "1", "--step-model", ""]  # fmt: skip


def _never(*args: object, **kwargs: object) -> None:
    raise AssertionError("measured although the inputs were bad")


# --- argparse types and selections -------------------------------------------------------------


@pytest.mark.parametrize("text", ["abc", "32,", "0", "", "84,4"])
def test_image_sizes_refuses_text_empty_items_and_sides_below_8(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected comma-separated image sides"):
        image_sizes(text)


def test_image_sizes_keeps_the_order_and_drops_duplicates() -> None:
    assert image_sizes("84, 32,84") == (84, 32)


@pytest.mark.parametrize("bench", [bench_traffic, bench_pipeline])
@pytest.mark.parametrize("sizes", ["abc", "32,", "0"])
def test_bad_sizes_are_a_one_line_argparse_error_not_a_traceback(bench, sizes: str, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        bench.main(["--sizes", sizes])
    assert e.value.code == 2
    assert "argument --sizes: expected comma-separated image sides" in capsys.readouterr().err


def test_device_name_accepts_cpu_and_auto_and_refuses_unknown_names() -> None:
    assert device_name("cpu") == "cpu" and device_name("auto") == "auto"
    for bad in ("foo", "mps", "cuda:x"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected auto, cpu, cuda or cuda:N"):
            device_name(bad)


@pytest.mark.parametrize("main", [bench_train.main, bench_algorithms.main, bench_pipeline.main])
def test_an_unknown_device_is_a_one_line_error_before_any_work(main, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--device", "foo"])
    assert e.value.code == 2 and "argument --device: expected auto, cpu, cuda or cuda:N, got 'foo'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_bench_pipeline_device_cuda_without_cuda_fails_before_the_cpu_rows(monkeypatch, capsys) -> None:
    monkeypatch.setattr(bench_pipeline, "measure", _never)
    with pytest.raises(SystemExit):
        bench_pipeline.main([*TINY_PIPE, "--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err


def test_parse_names_drops_duplicates_and_refuses_an_empty_selection() -> None:
    assert parse_names("--only", "convert, eval,convert", ["convert", "eval"]) == ["convert", "eval"]
    with pytest.raises(FsmtlError, match="--only: empty selection"):
        parse_names("--only", " , ", ["convert", "eval"])


def test_empty_selections_are_errors_in_every_bench(tmp_path: Path) -> None:
    with pytest.raises(FsmtlError, match="--backends: empty selection"):
        bench_pipeline.main(["--backends", ""])
    with pytest.raises(FsmtlError, match="--algorithms: empty selection"):
        bench_algorithms.main([*TINY_ALGO, "--skip-tta", "--algorithms", "", "--out", str(tmp_path)])
    with pytest.raises(FsmtlError, match="--only: empty selection"):
        bench_all.main(["--only", "", "--json", str(tmp_path / "all.json"), "--out", str(tmp_path / "each")])
    assert not (tmp_path / "all.json").exists()


def test_bench_all_runs_a_benchmark_named_twice_once(tmp_path: Path, capsys) -> None:
    plan = {"traffic": ["--sizes", "16", "--tasks", "1", "--batches", "1"]}
    argv = ["--only", "traffic,traffic", "--json", str(tmp_path / "all.json"), "--out", str(tmp_path / "each")]
    assert bench_all.main(argv, plan=plan) == 0
    assert capsys.readouterr().out.count("=== fsmtl bench traffic ===") == 1


def test_fsmtl_help_lists_every_benchmark() -> None:
    from fsmtl.benchmarks.__main__ import _BENCHES
    from fsmtl.cli import _COMMANDS
    assert all(name in _COMMANDS["bench"][2] for name in _BENCHES)


# --- the --json destination is checked before measuring ------------------------------------------


def test_check_writable_names_the_path_given_not_a_temporary_file(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(FsmtlError, match=f"--json {blocker / 'out.json'}: cannot write there"):
        check_writable(blocker / "out.json")
    with pytest.raises(FsmtlError, match="is a directory"):
        check_writable(tmp_path)
    check_writable(tmp_path / "new" / "out.json")  # creates the folder, leaves no probe behind
    assert list((tmp_path / "new").iterdir()) == []


def test_a_failed_final_write_names_the_json_path(tmp_path: Path, monkeypatch) -> None:
    import fsmtl.benchmarks.common as common
    def fail(path: object, doc: object) -> None:
        raise OSError(28, "No space left on device", str(tmp_path / ".x.json.123.tmp"))

    monkeypatch.setattr(common, "atomic_write_json", fail)
    with pytest.raises(FsmtlError, match=r"--json .*x\.json: cannot be written \(No space left on device\)$"):
        write_results(tmp_path / "x.json", "t", {}, [])


@pytest.mark.parametrize("bench", ["pipeline", "traffic", "train", "algorithms", "all"])
def test_an_unwritable_json_path_fails_before_any_measuring(bench: str, tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bad = str(blocker / "r.json")
    monkeypatch.setattr(bench_pipeline, "measure", _never)
    monkeypatch.setattr(bench_traffic, "count", _never)
    monkeypatch.setattr(bench_train, "time_config", _never)
    monkeypatch.setattr(bench_algorithms, "step_costs", _never)
    monkeypatch.setattr(bench_all, "run_one", _never)
    argv = {"pipeline": [*TINY_PIPE, "--json", bad], "traffic": ["--sizes", "16", "--json", bad],
            "train": ["--model", "conv4", "--size", "32", "--no-data", "--no-memory", "--device", "cpu", "--json", bad],
            "algorithms": [*TINY_ALGO, "--skip-tta", "--json", bad], "all": ["--json", bad, "--out", str(tmp_path)]}
    main = {"pipeline": bench_pipeline.main, "traffic": bench_traffic.main, "train": bench_train.main,
            "algorithms": bench_algorithms.main, "all": bench_all.main}[bench]  # fmt: skip
    with pytest.raises(FsmtlError, match=f"--json {bad}: cannot write there"):
        main(argv[bench])


# --- bench pipeline ------------------------------------------------------------------------------


def test_bench_pipeline_checks_every_data_directory_before_measuring(tiny_shards: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(bench_pipeline, "measure", _never)
    with pytest.raises(FsmtlError, match=f"--data: {tmp_path / 'missing'}: not a directory"):
        bench_pipeline.main([*TINY_PIPE, "--data", str(tiny_shards), str(tmp_path / "missing")])


def test_bench_pipeline_refuses_sizes_with_data(tiny_shards: Path, monkeypatch) -> None:
    monkeypatch.setattr(bench_pipeline, "measure", _never)
    with pytest.raises(FsmtlError, match="--sizes: .*with --data"):
        bench_pipeline.main([*TINY_PIPE, "--data", str(tiny_shards), "--sizes", "16"])


def test_bench_pipeline_draws_one_untimed_batch_before_timing_even_with_warmup_0(tiny_shards: Path, monkeypatch) -> None:
    import fsmtl.benchmarks.common as common
    from fsmtl.pipelines.config import PipelineConfig
    drawn: list[int] = []
    real_loader = bench_pipeline._loader

    class Counting:
        def __init__(self, loader) -> None:
            self.loader, self.backend = loader, loader.backend

        def __next__(self):
            drawn.append(1)
            return next(self.loader)

        def close(self) -> None:
            self.loader.close()

    seen = {}

    def windows(fn, device, warmup, runs):
        seen["drawn_before_timing"], seen["warmup"] = len(drawn), warmup
        return [1.0] * runs

    monkeypatch.setattr(bench_pipeline, "_loader", lambda *a: Counting(real_loader(*a)))
    monkeypatch.setattr(common, "time_windows", windows)
    cfg = PipelineConfig(ways=3, shots=2, queries=2, tasks_per_batch=2)
    args = argparse.Namespace(batches=1, warmup=0, runs=1, step_model="")
    bench_pipeline.measure("torch", tiny_shards, cfg, args)
    assert seen == {"drawn_before_timing": 1, "warmup": 0}


def test_pass_fail_verdicts_are_given_only_at_the_size_the_targets_are_set_for() -> None:
    row = {"backend": "torch", "device": "cpu", "x_vs_reference": 12.0, "x_vs_seed-literal": 20.0}
    assert bench_pipeline.verdicts([{**row, "size": 32}]) == []
    assert bench_pipeline.verdicts([{**row, "size": 84}]) == [
        "84px: torch is 12.0x reference (target >= 10x): PASS", "84px: torch is 20.0x seed-literal (target >= 25x): FAIL"]


def test_bench_pipeline_json_records_the_sizes_really_used(tmp_path: Path, capsys) -> None:
    out = tmp_path / "p.json"
    assert bench_pipeline.main([*TINY_PIPE, "--sizes", "32", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["config"]["sizes"] == [32] and "32x32x3" in doc["config"]["data"] and "84" not in doc["config"]["data"]
    assert doc["verdicts"] == [] and ": PASS" not in capsys.readouterr().out


def test_bench_pipeline_makes_the_ffcv_loaders_and_exports_before_measuring_anything(tiny_shards: Path, monkeypatch) -> None:
    from conftest import optional_import

    optional_import("ffcv")
    calls: list[str] = []
    real = bench_pipeline._loader
    monkeypatch.setattr(bench_pipeline, "_loader", lambda name, *a: calls.append(name) or real(name, *a))
    monkeypatch.setattr(bench_pipeline, "measure_all", lambda jobs, args, loaders: calls.append("measure") or [])
    bench_pipeline.main([*TINY_PIPE, "--backends", "torch,ffcv", "--data", str(tiny_shards), "--device", "cpu"])
    assert calls == ["ffcv", "measure"]  # the .beton export (a fork) before any back end has run


# --- bench algorithms ----------------------------------------------------------------------------


def test_ctrl_c_during_time_to_accuracy_is_an_interrupt_and_keeps_the_step_costs(tiny_shards: Path, tmp_path: Path,
                                                                                  monkeypatch, capsys) -> None:
    import fsmtl.train.__main__ as train_main

    monkeypatch.setattr(train_main, "main", lambda argv: 130)  # the trainer's answer to Ctrl-C
    argv = [*TINY_ALGO, "--algorithms", "mtl", "--data", str(tiny_shards), "--out", str(tmp_path)]
    assert run_stage_main(bench_algorithms.main, argv) == 130
    assert "fsmtl: interrupted" in capsys.readouterr().err
    doc = json.loads((tmp_path / "algorithms.json").read_text())
    assert doc["partial"] is True and [r["algorithm"] for r in doc["rows"]] == ["mtl"]
    assert doc["config"]["size"] == 32  # --data's image side, --size not given


def test_bench_algorithms_refuses_a_size_other_than_the_datas(tiny_shards: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(bench_algorithms, "step_costs", _never)
    with pytest.raises(FsmtlError, match=f"--size 16: --data {tiny_shards} holds 32x32 images"):
        bench_algorithms.main([*TINY_ALGO, "--size", "16", "--data", str(tiny_shards), "--out", str(tmp_path)])


def test_the_time_to_accuracy_table_gives_accuracy_in_percent() -> None:
    (row,) = bench_algorithms.tta_summary({"mtl": [{"wall_s": 1.0, "val_acc": 0.5, "step": 3},
                                                   {"wall_s": 2.0, "val_acc": 0.625, "step": 6}]})
    assert row["best_val_acc_pct"] == 62.5 and row["final_val_acc_pct"] == 62.5 and row["best_val_acc"] == 0.625


# --- bench train, bench all ----------------------------------------------------------------------


def test_bench_train_prints_each_row_as_a_formatted_line() -> None:
    row = {"config": "bf16-cl", "images_per_s": 1234.5, "ms_per_step": 40.51, "batch_images": 50, "first_call_s": 2.14}
    assert bench_train.row_line(row) == "bf16-cl: 1,234 images/s, 40.5 ms/step (first call 2.1 s)"
    assert bench_train.row_line({"config": "x", "error": "RuntimeError: no"}) == "x: FAILED RuntimeError: no"


def test_bench_all_interrupted_writes_the_finished_benchmarks_and_exits_130(tmp_path: Path, monkeypatch, capsys) -> None:
    def interrupted(argv: list[str]) -> int:
        raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "fsmtl.benchmarks.bench_stopped", types.SimpleNamespace(main=interrupted))
    plan = {"traffic": ["--sizes", "16", "--tasks", "1", "--batches", "1"], "stopped": []}
    out = tmp_path / "all.json"
    argv = ["--json", str(out), "--out", str(tmp_path / "each")]
    assert run_stage_main(lambda a: bench_all.main(a, plan=plan), argv) == 130
    assert "fsmtl: interrupted" in capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["partial"] is True and doc["interrupted"] == "stopped" and set(doc["results"]) == {"traffic"}
