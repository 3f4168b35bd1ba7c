"""The prepared GPU check: CUDA paths against their CPU twins, then the GPU timings, one JSON.

Run by ``benchmarks/gpu_check.sh`` on a lent GPU machine (no network, no torch-optimizer, wandb,
DALI or FFCV there). Every step has its own time budget and the JSON is rewritten after each step,
so whatever finished survives a step that fails or a run that is cut short. On a machine without
CUDA, ``--device cpu --quick`` runs the same steps at toy sizes (that is how it is tested).

Steps:
  1. check-sampling: the torch loader gives identical indices/labels and equal images on CPU and CUDA;
  2. check-augment: Lee19 with the same parameters on CPU and CUDA agrees (max abs error), for
     the torch ops and the fused Triton kernel (float32 and bfloat16);
  3. check-heads: logreg/proto/ridge/svm predictions on CUDA agree with CPU float64;
  4. pipeline: torch back end images/s at 84 and 32 px, with its Triton kernel and forced onto
     torch ops, on CUDA and CPU (and reference on CPU), share of a ResNet-12 step;
  5. eval: 2,000 tasks of 5-way 5-shot batched logreg, tasks/s, against sklearn on a sample;
  6. ddp: a one-rank torchrun training run under DistributedDataParallel (NCCL on CUDA, gloo on
     the CPU), stopped after one epoch and resumed for a second;
  7. epoch: seconds per epoch of the mini-ImageNet 5-shot preset on mini-ImageNet-shaped synthetic
     shards, and the GPU-hours projected for the seed's schedule;
  8. train: ResNet-12 84x84 at the mini-ImageNet 5-shot preset's step shape (2 tasks x 5 ways x 10
     images): images/s, FLOPs counted and MFU, fp32 eager vs bf16 + channels_last (+ compile); data wait.
     Last, because torch.compile's warm-up is the least predictable cost: should the time limit
     cut it, every other step is already in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from fsmtl.benchmarks.common import format_table, hardware_info, positive_int
from fsmtl.core.cli import CliParser, plain_doc
from fsmtl.core.fileio import atomic_write_json


def _agree(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.cpu() == b.cpu()).double().mean()) * 100.0


def check_sampling(device: torch.device, tmp: Path, quick: bool) -> dict[str, Any]:
    """The same seed gives the same task batch (indices, labels, images) on CPU and ``device``."""
    from fsmtl.pipelines.config import PipelineConfig
    from fsmtl.pipelines.loader import build_task_loader
    from fsmtl.preprocess.shard_reader import load_split, open_shards
    from fsmtl.preprocess.synthetic import SyntheticConfig, write_synthetic_shards as write_synthetic

    root = write_synthetic(tmp / "check84", SyntheticConfig(image_size=84, classes=(10, 5, 5), per_class=20))
    shards = open_shards(root)
    split = load_split(root, "train")
    out: dict[str, Any] = {}
    batches = {}
    for dev in ("cpu", str(device)):
        cfg = PipelineConfig(device=dev, seed=3, tasks_per_batch=4, prefetch=False)
        with build_task_loader(split, shards.mean, shards.std, cfg) as loader:
            batches[dev] = [next(loader) for _ in range(2)]
            out[f"kernel_{dev}"] = getattr(loader.backend, "kernel", None)
    a, b = batches["cpu"], batches[str(device)]
    out["labels_equal"] = all(torch.equal(x.global_class.cpu(), y.global_class.cpu()) and torch.equal(x.label.cpu(), y.label.cpu()) for x, y in zip(a, b))
    out["images_max_abs_diff"] = max(float((x.images.float().cpu() - y.images.float().cpu()).abs().max()) for x, y in zip(a, b))
    out["ok"] = bool(out["labels_equal"] and out["images_max_abs_diff"] < 1e-3)
    return out


def check_augment(device: torch.device, quick: bool) -> dict[str, Any]:
    """Lee19 on CPU and ``device`` with the same drawn parameters: max abs error after normalising,
    for the torch ops and for the fused Triton kernel (the CUDA default), float32 and bfloat16."""
    from fsmtl.pipelines.augment import apply_lee, augment_rows, draw_lee_params

    g = torch.Generator().manual_seed(0)
    n, size = (64, 84) if not quick else (8, 32)
    images = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)
    params = draw_lee_params(n, g, pad=8 if size >= 64 else 4)
    mean, std = (0.47, 0.45, 0.41), (0.28, 0.27, 0.28)
    ref = apply_lee(images, params, mean, std, torch.float32)
    dev_params = type(params)(*(p.to(device) if torch.is_tensor(p) else p for p in params))
    got = apply_lee(images.to(device), dev_params, mean, std, torch.float32)
    err = float((got.cpu() - ref).abs().max())
    out: dict[str, Any] = {"images": n, "size": size, "max_abs_diff": err, "ok": err < 1e-3}
    if device.type != "cuda":
        return out
    try:  # the kernel the CUDA pipeline uses by default (rows in order: same as ``ref``)
        from fsmtl.pipelines.triton_aug import augment_rows_triton

        rows = torch.arange(n)
        tri = augment_rows_triton(images.to(device), rows, params, mean, std, torch.float32)
        tri16 = augment_rows_triton(images.to(device), rows, params, mean, std, torch.bfloat16)
        ref16 = augment_rows(images, rows, params, mean, std, torch.bfloat16)
        out["triton_max_abs_diff"] = float((tri.cpu() - ref).abs().max())
        out["triton_bf16_max_abs_diff"] = float((tri16.cpu().float() - ref16.float()).abs().max())
        out["ok"] = out["ok"] and out["triton_max_abs_diff"] < 1e-3 and out["triton_bf16_max_abs_diff"] < 5e-2
    except Exception as e:  # noqa: BLE001 - the CUDA default kernel is unusable here: a failed check
        out["triton"] = f"{type(e).__name__}: {str(e)[:300]}"
        out["ok"] = False
    return out


def check_heads(device: torch.device, quick: bool) -> dict[str, Any]:
    """Each feature head on ``device`` against CPU float64: prediction agreement (%)."""
    from fsmtl.benchmarks.bench_eval import clustered_features, split_tasks
    from fsmtl.models.heads import adapt

    tasks = 200 if not quick else 20
    feats = clustered_features(tasks, 5, 20, 640, 5.0, seed=1)
    s, y, q, target = split_tasks(feats, 5)
    out: dict[str, Any] = {}
    for head in ("logreg", "proto", "ridge", "svm"):
        ref = adapt(s.double(), y, q.double(), head=head)
        got = adapt(s.to(device), y.to(device), q.to(device), head=head)
        out[head] = {"agreement_pct": _agree(ref, got), "acc_pct": _agree(got, target.expand_as(got))}
    out["ok"] = all(v["agreement_pct"] >= 99.0 for v in out.values() if isinstance(v, dict))
    return out


class TimeUp(BaseException):  # not an Exception: the benchmarks' own "except Exception" must not swallow it
    """SIGTERM from gpu_check.sh's ``timeout``: end the step in progress, keep what it wrote.

    ``partial`` holds the JSON the interrupted benchmark had written so far (None if nothing)."""

    partial: dict[str, Any] | None = None


def _time_up(signum: int, frame: object) -> None:
    raise TimeUp


def run_bench(module: str, argv: list[str], tmp: Path) -> dict[str, Any]:
    """Run ``benchmarks.<module>.main(argv + --json)`` and return its JSON document."""
    import importlib

    path = tmp / f"{module}.json"
    try:
        rc = importlib.import_module(f"fsmtl.benchmarks.{module}").main([*argv, "--json", str(path)])
    except TimeUp as e:
        e.partial = json.loads(path.read_text()) if path.is_file() else None  # rows written so far
        raise
    if rc:
        raise RuntimeError(f"{module} exited with {rc}")
    return json.loads(path.read_text())


def ddp_resume(device: torch.device, tmp: Path, quick: bool, timeout_s: float = 150.0) -> dict[str, Any]:
    """``torchrun --nproc_per_node 1 -m fsmtl.train`` for one epoch, then ``--resume`` for a second.

    One rank still joins a process group (NCCL on CUDA) and trains under DistributedDataParallel,
    so this is the multi-GPU code path on one card. Checks that the log names the back end, that
    both epochs are in metrics.jsonl and that the resumed run continued from the first's step.
    """
    import subprocess
    import sys

    from fsmtl.preprocess.synthetic import SyntheticConfig, write_synthetic_shards as write_synthetic
    from fsmtl.train.distributed import process_group_backend

    size = 84 if not quick else 32
    root = write_synthetic(tmp / "ddp-data", SyntheticConfig(image_size=size, classes=(16, 5, 5), per_class=20))
    run = tmp / "ddp-run"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "fsmtl.train"]
    common = ["--device", str(device), "--wandb", "disabled", "--no-progress"]
    first = [*launch, "--data", str(root), "--preset", "mini-imagenet-5shot", "--out", str(run), "--epoch-length", "40",
             "--max-epochs", "1", "--val-epoch-length", "20", "--test-queries", "15", *common,
             *(["--model", "conv4"] if quick else [])]  # fmt: skip
    resume = [*launch, "--resume", str(run), "--max-epochs", "2", *common]
    out: dict[str, Any] = {"backend_expected": process_group_backend(device)}
    logs = []
    for name, cmd in (("first", first), ("resume", resume)):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env={**os.environ, "OMP_NUM_THREADS": "4"})
        out[f"{name}_s"] = round(time.perf_counter() - t0, 1)
        out[f"{name}_rc"] = proc.returncode
        logs.append(proc.stderr)
        if proc.returncode:
            out[f"{name}_log_tail"] = (proc.stdout + proc.stderr)[-1500:]
            out["ok"] = False
            return out
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    out["epochs"] = [r.get("epoch") for r in rows]
    out["steps"] = [r.get("step") for r in rows]
    out["train_loss"] = [r.get("train_loss") for r in rows]
    out["ddp_in_log"] = all(f"DDP over {out['backend_expected']}" in log for log in logs)
    out["resumed_from_epoch_1"] = "from epoch 1" in logs[1]
    out["ok"] = bool(out["ddp_in_log"] and out["resumed_from_epoch_1"] and out["epochs"] == [1, 2]
                     and out["steps"][1] == 2 * out["steps"][0])  # fmt: skip
    return out


def epoch_time(device: torch.device, tmp: Path, quick: bool, steps: int, compile_: bool = False) -> dict[str, Any]:
    """Seconds per epoch of the mini-ImageNet 5-shot preset, projected to the seed's schedule
    (``compile_``: with ``--compile``, whose warm-up falls in the first, untimed epoch)."""
    from fsmtl.preprocess.synthetic import SyntheticConfig, write_synthetic_shards as write_synthetic
    from fsmtl.train.__main__ import main as train_main
    from fsmtl.train.presets import PRESETS
    from fsmtl.train.runlog import reset_peak_memory

    size, per_class = (84, 100) if not quick else (32, 20)
    root = write_synthetic(tmp / "mini", SyntheticConfig(image_size=size, classes=(64, 16, 20), per_class=per_class))
    run = tmp / "run"
    val_tasks = 400 if not quick else 20
    args = ["--data", str(root), "--preset", "mini-imagenet-5shot", "--out", str(run), "--device", str(device),
            "--epoch-length", str(steps * PRESETS["mini-imagenet-5shot"]["meta_batch_size"]), "--max-epochs", "2", "--val-epoch-length", str(val_tasks),
            "--wandb", "disabled", "--no-progress", "--test-queries", "15" if quick else "30"]  # fmt: skip
    if quick:
        args += ["--model", "conv4"]
    if compile_:
        args.append("--compile")
    reset_peak_memory(device)  # this step's peak, not the earlier steps' (the counter is per process)
    t0 = time.perf_counter()
    rc = train_main(args)
    if rc == 143:  # the time limit's SIGTERM, taken by the trainer's own graceful stop
        raise TimeUp
    if rc:
        raise RuntimeError(f"train exited with {rc}")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    last = rows[-1]  # epoch 2: warm (compilation, cudnn autotuning and allocator growth are in epoch 1)
    train_s_per_step = (last["epoch_s"]) / steps
    val_s = float(last.get("val_s") or 0.0)
    # An epoch is the seed's: 1600 training tasks (800 steps of the preset's 2 tasks) + 400 val tasks.
    mbs = int(json.loads((run / "config.json").read_text()).get("meta_batch_size", 1))
    epoch_s = train_s_per_step * -(-1600 // mbs) + val_s * (400 / val_tasks)
    out = {"steps_per_epoch_measured": steps, "train_s_per_step": train_s_per_step, "val_s": val_s,
           "images_per_s": last.get("images_per_s"), "data_wait_frac": last.get("data_wait_frac"),
           "peak_mem_mb": last.get("peak_mem_mb"), "seconds_per_seed_epoch": epoch_s,
           "total_s": time.perf_counter() - t0, "compile": compile_}  # fmt: skip
    # The seed trains with early stopping (patience 15); its published run took 3.7 V100-hours.
    out["projected_gpu_hours"] = {f"{e}_epochs": epoch_s * e / 3600 for e in (30, 60, 100)}
    out["seed_published_gpu_hours"] = 3.7
    return out


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="python -m fsmtl.benchmarks.gpu_check", description=plain_doc(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--json", type=Path, default=Path("gpu_check.json"))
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="toy sizes (for a CPU dry run)")
    p.add_argument("--only", default="", help="comma-separated step names to run (default: all)")
    p.add_argument("--epoch-steps", type=positive_int, default=300, help="steps timed per epoch in the epoch step")
    p.add_argument("--epoch-compile", action="store_true", help="the epoch step trains with --compile (warm-up in its first epoch)")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("gpu_check: CUDA is not available here; use --device cpu --quick for a dry run")
            return 2
        torch.backends.cudnn.benchmark = True
    q = a.quick
    signal.signal(signal.SIGTERM, _time_up)  # `timeout` sends SIGTERM: save the JSON rather than die
    t_all = time.perf_counter()
    doc: dict[str, Any] = {"benchmark": "gpu_check", "hardware": hardware_info(device), "steps": {}}
    with tempfile.TemporaryDirectory(prefix="fsmtl-gpu-check-") as tmp_s:
        tmp = Path(tmp_s)
        pipe_args = ["--device", str(device), "--runs", "3" if q else "5", "--batches", "2" if q else "10"]
        steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("check-sampling", lambda: check_sampling(device, tmp, q)),
            ("check-augment", lambda: check_augment(device, q)),
            ("check-heads", lambda: check_heads(device, q)),
            ("pipeline", lambda: run_bench("bench_pipeline", [*pipe_args, "--sizes", "32" if q else "84,32",
                                                               "--backends", "torch,torch-ops,reference",
                                                               "--step-model", "" if q else "resnet12"], tmp)),
            ("eval", lambda: run_bench("bench_eval", ["--device", str(device), "--tasks", "40" if q else "2000",
                                                      "--sklearn-tasks", "20" if q else "200"], tmp)),
            ("ddp", lambda: ddp_resume(device, tmp, q)),
            ("epoch", lambda: epoch_time(device, tmp, q, 4 if q else a.epoch_steps, a.epoch_compile)),
            # the mini-ImageNet 5-shot preset's step: 2 tasks (meta_batch_size) x 5 ways x (5 + 5) images
            ("train", lambda: run_bench("bench_train", ["--model", "conv4" if q else "resnet12", "--size", "32" if q else "84",
                                                        "--tasks", "2", "--device", str(device),
                                                        *(["--no-compile", "--no-memory"] if q else [])], tmp)),
        ]  # fmt: skip
        only = {s for s in a.only.split(",") if s}
        for name, fn in steps:
            if only and name not in only:
                continue
            print(f"\n=== gpu_check: {name} ===", flush=True)
            t0 = time.perf_counter()
            out_of_time = False
            try:
                doc["steps"][name] = {"result": fn()}
            except TimeUp as e:  # gpu_check.sh's limit: keep what this step had written so far, then stop
                out_of_time = True
                doc["steps"][name] = {"error": "TimeUp: the time limit ended this step"}
                if e.partial is not None:
                    doc["steps"][name]["partial_result"] = e.partial
            except Exception as e:  # noqa: BLE001 - record the failure, go on with the next step
                traceback.print_exc()
                doc["steps"][name] = {"error": f"{type(e).__name__}: {e}"[:500]}
            doc["steps"][name]["seconds"] = round(time.perf_counter() - t0, 1)
            doc["total_seconds"] = round(time.perf_counter() - t_all, 1)
            atomic_write_json(a.json, doc)
            if out_of_time:
                break
    rows = []
    for name, st in doc["steps"].items():
        res = st.get("result", {})
        rows.append({"step": name, "seconds": st["seconds"], "ok": res.get("ok", "error" not in st),
                     "error": st.get("error", "")[:60]})  # fmt: skip
    print("\n" + format_table(rows, ["step", "seconds", "ok", "error"]))
    print(f"wrote {a.json}; for RESULTS.md: python -m fsmtl.benchmarks.gpu_report {a.json}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
