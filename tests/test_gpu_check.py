"""The GPU check's correctness steps run on their CPU twins (the script itself needs CUDA for real)."""

from __future__ import annotations

import json
import sys

from fsmtl.benchmarks import gpu_check


def test_gpu_check_dry_run_on_cpu_writes_passing_checks(tmp_path):
    out = tmp_path / "gc.json"
    rc = gpu_check.main(["--device", "cpu", "--quick", "--only", "check-sampling,check-augment,check-heads",
                         "--json", str(out)])
    doc = json.loads(out.read_text())
    assert rc == 0
    assert set(doc["steps"]) == {"check-sampling", "check-augment", "check-heads"}
    assert doc["steps"]["check-sampling"]["result"]["labels_equal"] is True
    assert doc["steps"]["check-augment"]["result"]["max_abs_diff"] < 1e-5
    assert doc["steps"]["check-heads"]["result"]["logreg"]["agreement_pct"] >= 99.0


def test_gpu_check_refuses_cuda_when_there_is_none(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert gpu_check.main(["--json", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()


def test_gpu_check_needs_none_of_the_packages_the_gpu_machine_lacks(tmp_path, monkeypatch):
    # the lent GPU machine has torch, numpy, numba, scikit-learn, tqdm, matplotlib only
    for name in ("wandb", "torch_optimizer", "psutil", "ffcv", "learn2learn", "nvidia.dali"):
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "gc.json"
    rc = gpu_check.main(["--device", "cpu", "--quick", "--only", "train,epoch", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert rc == 0, doc
    assert all("error" not in row for row in doc["steps"]["train"]["result"]["rows"])
    assert doc["steps"]["epoch"]["result"]["seconds_per_seed_epoch"] > 0


def test_the_shell_script_runs_and_leaves_its_files_in_out(tmp_path):
    import os
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(script), "--device", "cpu", "--quick", "--only", "check-augment"],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads((tmp_path / "gpu_check.json").read_text())["steps"]["check-augment"]["result"]["ok"]
    assert json.loads((tmp_path / "doctor.json").read_text())["components"][0]["module"] == "torch"
    assert "gpu_check exit code 0" in proc.stdout and (tmp_path / "gpu_check.log").stat().st_size > 0
    assert float((tmp_path / "gpu_check_total_s.txt").read_text()) >= 0


def test_gpu_report_turns_a_check_into_verdicts(tmp_path, capsys):
    from fsmtl.benchmarks import gpu_report

    doc = {
        "hardware": {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "date": "2026-12-01T00:00:00Z"},
        "total_seconds": 301.0,
        "script_seconds": 330.0,
        "steps": {
            "check-augment": {"result": {"ok": False, "triton": "CompilationError: at 12:4"}, "seconds": 1.0},
            "pipeline": {"result": {"rows": [
                {"size": 84, "backend": "torch", "kernel": "triton", "device": "cuda", "images_per_s": 2.5e6,
                 "ms_per_batch": 0.12, "pipeline_share_of_step": 0.011},
                {"size": 84, "backend": "reference", "device": "cpu", "images_per_s": 2.1e4}]}, "seconds": 30.0},
            "train": {"result": {"config": {"model": "resnet12", "size": 84}, "rows": [
                {"config": "fp32-eager", "images_per_s": 1000.0, "ms_per_step": 300.0, "speedup_vs_fp32_eager": 1.0},
                {"config": "bf16-cl-compile", "images_per_s": 2500.0, "ms_per_step": 120.0, "speedup_vs_fp32_eager": 2.5}],
                "data_wait": {"data_wait_frac": 0.004}, "preset_memory": {"peak_mem_mb": 2100.0}}, "seconds": 150.0},
            "eval": {"error": "RuntimeError: boom", "seconds": 2.0},
            "ddp": {"result": {"backend_expected": "nccl", "ok": True, "first_s": 20.0, "resume_s": 15.0, "steps": [20, 40]},
                    "seconds": 35.0},
            "epoch": {"result": {"train_s_per_step": 0.01, "seconds_per_seed_epoch": 9.0,
                                 "projected_gpu_hours": {"30_epochs": 0.075, "60_epochs": 0.15, "100_epochs": 0.25}}, "seconds": 40.0},
        },
    }  # fmt: skip
    path = tmp_path / "gc.json"
    path.write_text(json.dumps(doc))
    assert gpu_report.main([str(path)]) == 1  # the train speed-up misses its 3x target
    text = capsys.readouterr().out
    assert "## GPU check: NVIDIA H100 80GB HBM3" in text
    assert "| 2,500,000 images/s (seed's pipeline, all cores: 21,000) | PASS |" in text
    assert "| 1.10% | PASS |" in text and "| 2.50x | FAIL |" in text and "| 0.40% | PASS |" in text
    assert "eval: RuntimeError: boom" in text
    assert "| 330 s (script; Python part 301 s) | PASS |" in text
    assert "check-augment FAILED" in text and "The fused Triton kernel failed on the GPU: CompilationError" in text
    assert "| 84px torch | triton | cuda | 2,500,000 | 0.120 | 1.10% |" in text  # every pipeline row, with its kernel
    assert "projected at 60 epochs) | 0.150 h | PASS |" in text  # at most 0.15 h
    assert "logreg on the GPU >= 500x scikit-learn's per-task loop | - | not measured |" in text  # eval failed
    assert "DistributedDataParallel over nccl: a first run of one epoch and its --resume to a second both finished" in text


def test_a_step_cut_by_the_time_limit_keeps_what_it_wrote(tmp_path, monkeypatch):
    import os
    import signal

    import fsmtl.benchmarks.bench_train as bench_train
    real = bench_train.time_config

    def slow_second_row(name, *args, **kwargs):
        if name == "bf16-cl":  # gpu_check.sh's `timeout` fires during the second row
            os.kill(os.getpid(), signal.SIGTERM)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(bench_train, "time_config", slow_second_row)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "gc.json"
    try:
        rc = gpu_check.main(["--device", "cpu", "--quick", "--only", "train,check-augment", "--json", str(out)])
    finally:
        signal.signal(signal.SIGTERM, before)
    doc = json.loads(out.read_text())
    assert rc == 1 and "TimeUp" in doc["steps"]["train"]["error"]
    assert [r["config"] for r in doc["steps"]["train"]["partial_result"]["rows"]] == ["fp32-eager"]


def test_the_ddp_step_trains_one_torchrun_rank_and_resumes_it(tmp_path):
    out = tmp_path / "gc.json"
    assert gpu_check.main(["--device", "cpu", "--quick", "--only", "ddp", "--json", str(out)]) == 0
    res = json.loads(out.read_text())["steps"]["ddp"]["result"]
    assert res["backend_expected"] == "gloo" and res["ddp_in_log"] and res["resumed_from_epoch_1"]
    assert res["epochs"] == [1, 2] and res["steps"] == [20, 40]


def test_the_pipeline_probe_measures_planning_and_the_loader(tmp_path):
    from fsmtl.benchmarks import gpu_probe

    out = tmp_path / "probe.json"
    assert gpu_probe.main(["--device", "cpu", "--calls", "5", "--batches", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["plan_batch_us_600_per_class"] > 0 and res["plan_batch_us_60_per_class"] > 0
    assert {k for k in res if k.startswith("loader_")} == {
        f"loader_group{g}_prefetch{p}_images_per_s" for g in (2048, 8192) for p in (0, 1)}
    assert all(v > 0 for v in res.values())
