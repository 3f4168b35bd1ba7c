"""The GPU check's correctness steps run on their CPU twins (the script itself needs CUDA for real)."""

from __future__ import annotations

import json
import sys

from benchmarks import gpu_check


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
