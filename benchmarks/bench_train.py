"""``fsmtl bench train``: training-step throughput of the trainer's own step, three ways, one run.

Rows (same model, batch and optimizer; the step is :func:`train.loop.train_step` on a fixed batch,
so only the model's arithmetic is timed):

- ``fp32-eager``: float32 with TF32 off, NCHW, no compile (the seed's setting, on its V100);
- ``bf16-cl``: bf16 autocast + channels_last;
- ``bf16-cl-compile``: the same under ``torch.compile`` (skip with ``--no-compile``).

Then, with the real torch-back-end loader on synthetic shards of the same image size, the share
of wall time spent waiting in ``next(loader)`` (``data_wait_frac``, each step synchronised), and
the peak memory of one step of the mini-ImageNet 5-shot preset (2 tasks x 5 ways x (5+5) images,
ResNet-12 at 84x84): ``torch.cuda.max_memory_allocated`` on a GPU, the process's peak RSS on CPU.
Model FLOPs are counted, not guessed: one fp32 eager training step (forward and backward of the
backbone, heads and loss) under ``torch.utils.flop_counter.FlopCounterMode``, which counts the
matrix products and convolutions (elementwise ops, BatchNorm and the optimizer are not counted, as
MFU conventionally leaves them out). Each row's model FLOP utilisation (MFU) is its achieved model
FLOP/s over a dense matrix product's FLOP/s measured in the same run on the same device: a square
product in the row's own dtype (bf16 for the bf16 rows, true fp32 for fp32-eager), and for all rows
also over the bf16 product (the card's best).
Timing: one untimed first call (compile, autotune), ``--warmup`` untimed runs, then the median
over ``--runs`` runs of ``--steps`` steps each, synchronised. CPU defaults are tiny (1 task, 1 step,
no compile) because one ResNet-12 step at 84x84 takes seconds on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import torch

from fsmtl.benchmarks.common import (check_writable, device_name, format_table, median, nonnegative_int, positive_int, synchronize,
                               time_runs, write_results)
from fsmtl.core.cli import CliParser, plain_doc
from fsmtl.core.errors import FsmtlError
from fsmtl.models import MODEL_NAMES, build_model, feature_dim
from fsmtl.train.algorithms import get_algorithm
from fsmtl.train.shape import StepShape
from fsmtl.train.config import TrainConfig
from fsmtl.train.loop import StepTools, TrainNet, train_step
from fsmtl.train.mtl import init_heads
from fsmtl.train.optim import build_optimizer
from fsmtl.train.runlog import peak_memory_mb, reset_peak_memory


class FakeBatch(NamedTuple):
    images: torch.Tensor
    task: torch.Tensor
    label: torch.Tensor
    global_class: torch.Tensor


def make_batch(tasks: int, ways: int, per_class: int, size: int, n_classes: int, device: torch.device,
               channels_last: bool) -> FakeBatch:
    """A random normalised batch laid out as the loader lays it out (task, way, image)."""
    g = torch.Generator().manual_seed(0)
    b = tasks * ways * per_class
    x = torch.randn(b, 3, size, size, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    classes = torch.stack([torch.randperm(n_classes, generator=g)[:ways] for _ in range(tasks)])
    gc = classes.unsqueeze(2).expand(tasks, ways, per_class).reshape(-1)
    label = torch.arange(ways).repeat_interleave(per_class).repeat(tasks)
    task = torch.arange(tasks).repeat_interleave(ways * per_class)
    return FakeBatch(*(t.to(device) for t in (x, task, label, gc)))


def make_tools(model: str, size: int, tasks: int, device: torch.device, amp: torch.dtype | None,
               channels_last: bool, compile_: bool, n_classes: int = 64) -> StepTools:
    """The trainer's step parts for ``model`` (RAdam, MTL loss, seed defaults)."""
    torch.manual_seed(0)
    backbone = build_model(model, image_size=size)
    dim = feature_dim(backbone, 3, size)
    backbone = backbone.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    heads = init_heads(n_classes, dim, 5, torch.Generator().manual_seed(0)).to(device)
    net: torch.nn.Module = TrainNet(backbone, heads, get_algorithm("mtl"), StepShape(tasks, 5, 5, 5, True))
    opt = build_optimizer(net.parameters(), TrainConfig(), device)
    if compile_:
        net = torch.compile(net)
    return StepTools(net, backbone, opt, None, amp, device, 0.0)


def time_config(name: str, a: argparse.Namespace, device: torch.device, amp: torch.dtype | None,
                cl: bool, comp: bool) -> dict[str, Any]:
    tools = make_tools(a.model, a.size, a.tasks, device, amp, cl, comp)
    batch = make_batch(a.tasks, 5, 10, a.size, 64, device, cl)
    counter = iter(range(10**9))

    def steps() -> None:
        for _ in range(a.steps):
            train_step(tools, batch, next(counter))

    t0 = time.perf_counter()
    steps()  # first call: compile / cudnn autotune
    synchronize(device)
    first_s = time.perf_counter() - t0
    sec = median(time_runs(steps, device, warmup=a.warmup, runs=a.runs)) / a.steps
    n = batch.images.shape[0]
    return {"config": name, "images_per_s": n / sec, "ms_per_step": 1e3 * sec, "batch_images": n,
            "first_call_s": first_s}


def count_step_flops(model: str, size: int, tasks: int, device: torch.device) -> dict[str, Any]:
    """Model FLOPs of one fp32 eager training step of ``tasks`` 5-way x 10-image tasks, counted.

    Returns ``{"flops_per_step", "flops_per_image", "forward_flops_per_image", "by_op"}``: the
    matrix products and convolutions of the forward and backward passes, as counted by
    ``FlopCounterMode`` (a multiply-add is 2 FLOPs).
    """
    from torch.utils.flop_counter import FlopCounterMode

    tools = make_tools(model, size, tasks, device, None, False, False)
    batch = make_batch(tasks, 5, 10, size, 64, device, False)
    counter = FlopCounterMode(display=False)
    with counter:
        train_step(tools, batch, 0)
    total = int(counter.get_total_flops())
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    with torch.no_grad(), FlopCounterMode(display=False) as fwd:  # the forward alone: the usual "FLOPs of a model"
        tools.backbone.eval()
        tools.backbone(batch.images[:1])
    n = batch.images.shape[0]
    return {"flops_per_step": total, "flops_per_image": total / n, "forward_flops_per_image": int(fwd.get_total_flops()),
            "by_op": by_op}  # fmt: skip


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int | None = None, reps: int = 10) -> float:
    """A dense ``n x n @ n x n`` product's TFLOP/s on ``device`` in ``dtype`` (TF32 off for float32).

    ``n`` defaults to 8192 on CUDA (a few hundred microseconds a product on a Hopper card: well past
    launch overhead) and 1024 on the CPU. Three untimed products, then the mean of ``reps``.
    """
    n = n or (8192 if device.type == "cuda" else 1024)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    y = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    with tf32(False):
        for _ in range(3):
            torch.mm(x, y)
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(x, y)
        synchronize(device)
    return 2.0 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def add_utilisation(rows: list[dict[str, Any]], flops: dict[str, Any], peaks: dict[str, float]) -> None:
    """Each timed row gains ``model_tflops`` and ``mfu`` (over its dtype's measured matmul peak) and
    ``mfu_vs_bf16_peak``; rows that failed are left as they are."""
    for r in rows:
        if "ms_per_step" not in r:
            continue
        achieved = flops["flops_per_step"] / (r["ms_per_step"] / 1e3) / 1e12
        own = peaks["float32"] if r["config"].startswith("fp32") else peaks["bfloat16"]
        r["model_tflops"] = achieved
        r["mfu"] = achieved / own
        r["mfu_vs_bf16_peak"] = achieved / peaks["bfloat16"]


def data_wait(a: argparse.Namespace, device: torch.device, amp: torch.dtype | None) -> dict[str, Any]:
    """Fraction of wall time in next(loader), real torch-back-end loader, bf16 + channels_last step."""
    from fsmtl.pipelines.config import PipelineConfig
    from fsmtl.pipelines.loader import build_task_loader
    from fsmtl.preprocess.shard_reader import open_shards
    from fsmtl.preprocess.shard_writer import ShardWriter
    from fsmtl.preprocess.synthetic import SyntheticConfig, generate_split

    with tempfile.TemporaryDirectory(prefix="fsmtl-bench-train-") as tmp:
        root = Path(tmp) / "syn"
        scfg = SyntheticConfig(image_size=a.size, classes=(16, 5, 5), per_class=40, seed=0)
        with ShardWriter(root, "synthetic") as w:
            for split in ("train", "val", "test"):
                w.write_split(split, *generate_split(scfg, split))
            w.commit()
        shards = open_shards(root)
        pcfg = PipelineConfig(tasks_per_batch=a.tasks, out_dtype=amp or torch.float32, device=str(device))
        loader = build_task_loader(shards.split("train"), shards.mean, shards.std, pcfg)
        tools = make_tools(a.model, a.size, a.tasks, device, amp, True, False, n_classes=16)
        try:
            for i in range(a.warmup + 1):
                train_step(tools, next(loader), i)
            synchronize(device)
            wait = total = 0.0
            for i in range(a.steps * a.runs):
                t0 = time.perf_counter()
                batch = next(loader)
                t1 = time.perf_counter()
                train_step(tools, batch, i)
                synchronize(device)
                wait, total = wait + t1 - t0, total + time.perf_counter() - t0
        finally:
            loader.close()
    return {"data_wait_frac": wait / total, "steps": a.steps * a.runs}


def preset_memory(device: torch.device, amp: torch.dtype | None) -> dict[str, Any]:
    """Peak memory of one mini-ImageNet 5-shot preset step (ResNet-12, 84x84, 2 x 5 x (5+5) images)."""
    reset_peak_memory(device)
    tools = make_tools("resnet12", 84, 2, device, amp, True, False)
    batch = make_batch(2, 5, 10, 84, 64, device, True)
    for i in range(2):
        train_step(tools, batch, i)
    synchronize(device)
    kind = "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS"
    return {"preset": "mini-imagenet-5shot", "peak_mem_mb": peak_memory_mb(device), "measure": kind}


def parse_args(argv: list[str], cuda: bool) -> argparse.Namespace:
    from fsmtl.benchmarks.limits import check_batch_fits, check_flags

    p = CliParser(prog="fsmtl bench train", description=plain_doc(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet12", choices=MODEL_NAMES, help="backbone (default resnet12)")
    p.add_argument("--size", type=positive_int, default=84, help="image side (default 84)")
    p.add_argument("--tasks", "--batch", type=positive_int, default=6 if cuda else 1,
                   help="tasks per step, 5 ways x 10 images each (default 6 on CUDA = 300 images, 1 on CPU)")
    p.add_argument("--steps", type=positive_int, default=10 if cuda else 1, help="steps per timed run")
    p.add_argument("--runs", type=positive_int, default=5 if cuda else 1, help="timed runs, median taken (default 5 on CUDA, 1 on CPU)")
    p.add_argument("--warmup", type=nonnegative_int, default=3 if cuda else 0, help="untimed runs after the first call")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=cuda,
                   help="add the torch.compile row (default: on with CUDA; on CPU inductor's warm-up takes minutes)")
    p.add_argument("--no-data", dest="data", action="store_false", help="skip the data-wait measurement")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the preset peak-memory step")
    p.add_argument("--device", type=device_name, default="auto", help="auto (default: cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--json", type=Path, default=None, help="write the results here (default: not written)")
    a = p.parse_args(argv)
    if a.tasks < 1 or a.steps < 1 or a.runs < 1 or a.size < 16:
        raise FsmtlError("bench train: --tasks, --steps, --runs must be >= 1 and --size >= 16")
    if a.warmup < 0:
        raise FsmtlError("bench train: --warmup must be >= 0")
    check_flags(a, {"--tasks": 1, "--steps": 1, "--runs": 1, "--warmup": 0}, sides=("--size",))
    check_batch_fits("--tasks/--size", a.tasks * 50, a.size, a.device)  # 5 ways x 10 images a task
    return a


def _config(a: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}


def _speedups(rows: list[dict[str, Any]]) -> None:
    base = rows[0].get("images_per_s") if rows else None
    for r in rows:
        if base and "images_per_s" in r:
            r["speedup_vs_fp32_eager"] = r["images_per_s"] / base


def row_line(row: dict[str, Any]) -> str:
    """One row as a line of progress output: ``bf16-cl: 1,234 images/s, 40.5 ms/step (first call 2.1 s)``."""
    if "error" in row:
        return f"{row['config']}: FAILED {row['error']}"
    return (f"{row['config']}: {row['images_per_s']:,.0f} images/s, {row['ms_per_step']:.1f} ms/step "
            f"(first call {row['first_call_s']:.1f} s)")


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 for CUDA matmuls and cuDNN convolutions on or off inside the block; restored after."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def main(argv: list[str] | None = None) -> int:
    from fsmtl.core.device import CLI_ARGS, autocast_dtype, resolve_device

    cuda = torch.cuda.is_available()
    a = parse_args(list(argv or []), cuda)
    check_writable(a.json)
    device = resolve_device(a.device, CLI_ARGS)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as fsmtl train sets it; TF32 is set per row (tf32())
    amp = autocast_dtype("bf16", device)
    memory = preset_memory(device, amp) if a.memory else None  # first: on CPU, RSS peak is lifetime
    plan = [("fp32-eager", None, False, False), ("bf16-cl", amp, True, False)]
    if a.compile:
        plan.append(("bf16-cl-compile", amp, True, True))
    # the data wait first: cheap, and a time limit during the compile row must not cost it
    wait = data_wait(a, device, amp) if a.data else None
    flops = count_step_flops(a.model, a.size, a.tasks, device)
    peaks = {"float32": matmul_tflops(device, torch.float32), "bfloat16": matmul_tflops(device, torch.bfloat16)}
    print(f"model FLOPs (counted): {flops['flops_per_image'] / 1e9:.3f} GFLOP an image a training step "
          f"({flops['forward_flops_per_image'] / 1e9:.3f} forward); dense matmul peaks measured: "
          f"fp32 {peaks['float32']:.1f}, bf16 {peaks['bfloat16']:.1f} TFLOP/s", flush=True)
    rows = []
    for name, dt, cl, comp in plan:
        # fp32-eager is true float32, as the seed ran it on its V100 (no TF32 there); the bf16 rows
        # keep TF32 on for their few float32 matmuls, as fsmtl train sets it on CUDA
        with tf32(dt is not None and device.type == "cuda"):
            try:
                rows.append({**time_config(name, a, device, dt, cl, comp), "tf32": torch.backends.cudnn.allow_tf32})
            except Exception as e:  # noqa: BLE001 - e.g. no compiler for inductor: report, keep the others
                rows.append({"config": name, "error": f"{type(e).__name__}: {e}"[:200]})
        _speedups(rows)
        add_utilisation(rows, flops, peaks)
        # after every row, so that a run cut short (gpu_check.sh's time limit) keeps the rows it has
        write_results(a.json, "train", _config(a), rows, device, partial=True, data_wait=wait,
                      preset_memory=memory, amp_dtype=str(amp), flops=flops, matmul_peak_tflops=peaks)  # fmt: skip
        print(f"  {row_line(rows[-1])}", flush=True)
    print(format_table(rows, ["config", "images_per_s", "ms_per_step", "speedup_vs_fp32_eager", "model_tflops", "mfu",
                              "batch_images", "first_call_s"]))
    if wait:
        print(f"data wait (real torch loader, bf16 + channels_last, synchronised steps): {100 * wait['data_wait_frac']:.2f}% of wall time")
    if memory:
        print(f"peak memory, {memory['preset']} step ({memory['measure']}): {memory['peak_mem_mb']:.0f} MiB")
    write_results(a.json, "train", _config(a), rows, device, data_wait=wait, preset_memory=memory,
                  amp_dtype=str(amp), flops=flops, matmul_peak_tflops=peaks, tf32={"matmul": torch.backends.cuda.matmul.allow_tf32,
                                            "cudnn": torch.backends.cudnn.allow_tf32})
    if a.json:
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    import sys

    from fsmtl.core.cli import run_stage_main
    sys.exit(run_stage_main(main, sys.argv[1:]))
