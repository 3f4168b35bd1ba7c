"""``fsmtl bench algorithms``: the cost of MTL against the meta-learning baselines, one run.

(a) Step cost. For each algorithm (mtl, protonet, metaoptnet, and anil/maml where learn2learn
imports) on the same backbone, image size and task shape: seconds per optimizer step of
:func:`train.loop.train_step` on a fixed random batch (median of ``--runs`` runs of ``--steps``
steps after one untimed first call and ``--warmup`` untimed runs, synchronised), images/s, and
peak memory of the steps (CUDA: ``max_memory_allocated``; CPU: peak RSS above the RSS before the
algorithm's steps, sampled every 2 ms). A table, JSON rows and a bar chart of seconds per step.

(b) Time to accuracy (skip with ``--skip-tta``). Each algorithm trains for about ``--minutes``
through the real trainer (``fsmtl train --algorithm X``) on small synthetic shards (or ``--data``),
with an epoch length chosen from (a) so that validation (``--val-tasks`` 5-way tasks, the
logistic-regression head) comes about every ``--val-every`` seconds, for ``minutes * 60 / val_every``
epochs (``--max-minutes`` at twice the budget only guards against a bad step-time estimate: a stop
inside an epoch would leave that epoch unvalidated). Each run's
``metrics.jsonl`` gives validation accuracy against wall-clock time (validation time included,
the same for every algorithm); all curves go on one plot.

Output: the JSON (``--json``, default OUT/algorithms.json) with the plots beside it, named after
it (``algorithms_step_cost.png``, ``algorithms_time_to_accuracy.png``); (b)'s training runs go
under ``--out``. Interrupted (Ctrl-C, SIGTERM), it writes the rows measured so far, marked
partial, then exits 130 (143).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from fsmtl.benchmarks.bench_train import make_batch
from fsmtl.benchmarks.common import (check_writable, check_writable_dir, device_name, format_table, median, nonnegative_int,
                               parse_names, positive_int, synchronize, time_runs, write_results)
from fsmtl.core.cli import CliParser, plain_doc
from fsmtl.core.errors import FsmtlError
from fsmtl.models import MODEL_NAMES, build_model, feature_dim
from fsmtl.train.algorithms import ALGORITHMS, get_algorithm
from fsmtl.train.shape import StepShape
from fsmtl.train.config import TrainConfig
from fsmtl.train.loop import StepTools, TrainNet, train_step
from fsmtl.train.mtl import init_heads
from fsmtl.train.optim import build_optimizer
from fsmtl.train.runlog import reset_peak_memory

N_CLASSES = 64  # global head rows for MTL in (a): mini-ImageNet's train classes


def available_algorithms(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """The algorithms that can run here, and why the others cannot (e.g. learn2learn missing)."""
    ok, skipped = [], {}
    for name in names:
        try:
            get_algorithm(name)
            ok.append(name)
        except FsmtlError as e:
            skipped[name] = str(e)
    return ok, skipped


class PeakRss:
    """Peak resident memory above the RSS at entry, sampled by a thread (CPU runs)."""

    def __init__(self, every_s: float = 0.002) -> None:
        import psutil

        self._proc, self._every, self._stop = psutil.Process(), every_s, threading.Event()
        self.base = self.peak = 0

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self._every)

    def __enter__(self) -> "PeakRss":
        self.base = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def make_algorithm_tools(name: str, a: argparse.Namespace, shape: StepShape, device: torch.device,
                         amp: torch.dtype | None) -> StepTools:
    """Backbone (seed 0, so every algorithm starts from the same weights), heads, RAdam."""
    torch.manual_seed(0)
    backbone = build_model(a.model, image_size=a.size)
    dim = feature_dim(backbone, 3, a.size)
    backbone = backbone.to(device, memory_format=torch.channels_last)
    heads = init_heads(N_CLASSES, dim, shape.ways, torch.Generator().manual_seed(0)).to(device)
    net = TrainNet(backbone, heads, get_algorithm(name), shape)
    opt = build_optimizer([p for p in net.parameters() if p.requires_grad], TrainConfig(), device)
    return StepTools(net, backbone, opt, None, amp, device, 0.0)


def _measure_memory(device: torch.device, fn: Callable[[], None]) -> float:
    """Peak memory (MiB) while ``fn`` runs: CUDA max_memory_allocated, else the RSS rise."""
    if device.type == "cuda":
        synchronize(device)
        reset_peak_memory(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    release_free_memory()
    with PeakRss() as rss:
        fn()
    return rss.delta_mb


def release_free_memory() -> None:
    """Hand memory freed by earlier rows back to the OS (glibc keeps it cached), so that the next
    row's RSS rise counts its own allocations rather than reusing the previous row's."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: RSS rises are then lower bounds
            pass


def time_algorithm(name: str, a: argparse.Namespace, shape: StepShape, device: torch.device,
                   amp: torch.dtype | None) -> dict[str, Any]:
    """One row of (a): seconds per step, images/s, peak memory, first-call seconds."""
    tools = make_algorithm_tools(name, a, shape, device, amp)
    batch = make_batch(shape.n_tasks, shape.ways, shape.per_class, a.size, N_CLASSES, device, True)
    counter = iter(range(10**9))

    def steps() -> None:
        for _ in range(a.steps):
            train_step(tools, batch, next(counter))

    t0 = time.perf_counter()
    peak = _measure_memory(device, steps)  # the first call (allocations, autotune) holds the peak
    first_s = time.perf_counter() - t0
    sec = median(time_runs(steps, device, warmup=a.warmup, runs=a.runs)) / a.steps
    n = batch.images.shape[0]
    return {"algorithm": name, "s_per_step": sec, "images_per_s": n / sec, "peak_mem_mb": peak,
            "batch_images": n, "first_call_s": first_s}  # fmt: skip


def step_costs(names: list[str], a: argparse.Namespace, shape: StepShape, device: torch.device,
               amp: torch.dtype | None, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """(a): one row per algorithm, appended to ``rows`` as it is measured (an interrupt keeps them)."""
    for name in names:
        rows.append(time_algorithm(name, a, shape, device, amp))
        print(f"  {name}: {rows[-1]['s_per_step']:.3f} s/step", flush=True)
    base = next((r["s_per_step"] for r in rows if r["algorithm"] == "mtl"), None)
    for r in rows:
        r["cost_vs_mtl"] = r["s_per_step"] / base if base else None
    return rows


def tta_data(a: argparse.Namespace, root: Path) -> Path:
    """``--data``, or small synthetic shards at ``--size`` written once under ``root``."""
    if a.data is not None:
        return a.data
    from fsmtl.preprocess.synthetic import SyntheticConfig, write_synthetic_shards

    out = root / f"synthetic{a.size}"
    if not (out / "meta.json").exists():
        write_synthetic_shards(out, SyntheticConfig(image_size=a.size, classes=(32, 16, 16), per_class=100, seed=0))
    return out


def tta_argv(name: str, a: argparse.Namespace, data: Path, out: Path, epoch_length: int) -> list[str]:
    """The ``fsmtl train`` flags of one time-to-accuracy run."""
    return [
        "--data", str(data), "--out", str(out), "--algorithm", name, "--model", a.model,
        "--train-ways", str(a.ways), "--train-shots", str(a.shots), "--train-queries", str(a.queries),
        "--meta-batch-size", str(a.tasks), "--max-minutes", str(2 * a.minutes), "--max-epochs", str(max(1, round(60 * a.minutes / a.val_every))),
        "--epoch-length", str(epoch_length), "--val-epoch-length", str(a.val_tasks), "--test-queries", "15",
        "--early-stop-patience", "100000", "--scheduler", "none", "--device", a.device,
        "--precision", a.precision, "--wandb", "disabled", "--no-progress", "--log-every", "1", "--seed", "0",
        "--overwrite",
    ]  # fmt: skip


def time_to_accuracy(names: list[str], a: argparse.Namespace, sec_per_step: dict[str, float],
                     root: Path, curves: dict[str, list[dict[str, float]]]) -> dict[str, list[dict[str, float]]]:
    """Train each algorithm for ``--minutes``; its curve is [{"wall_s", "val_acc", "step"}] per
    epoch, added to ``curves`` as each run ends (an interrupt keeps the finished ones)."""
    from fsmtl.core.cli import Terminated
    from fsmtl.train.__main__ import main as train_main
    from fsmtl.train.runlog import read_metrics

    data = tta_data(a, root)
    for name in names:
        steps = max(1, min(1000, round(a.val_every / max(sec_per_step[name], 1e-6))))
        out = root / f"tta-{name}"
        print(f"  training {name} for {a.minutes} min (epochs of {steps} steps) -> {out}", flush=True)
        code = train_main(tta_argv(name, a, data, out, steps * a.tasks))  # --epoch-length counts tasks
        # the trainer turns Ctrl-C / SIGTERM into a checkpoint and exit code 130 / 143: the same
        # signal stops this benchmark, as an interrupt, not as a failed training run
        if code == 130:
            raise KeyboardInterrupt
        if code == 143:
            raise Terminated
        if code:
            raise FsmtlError(f"bench algorithms: fsmtl train --algorithm {name} exited with {code}")
        curves[name] = [{"wall_s": r["wall_s"], "val_acc": r["val_acc"], "step": r["step"]}
                        for r in read_metrics(out) if r.get("val_acc") is not None]
    return curves


def plot_tta(curves: dict[str, list[dict[str, float]]], out: Path, title: str) -> Path:
    """Validation accuracy (%) against wall-clock seconds, one line per algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, pts in curves.items():
        ax.plot([p["wall_s"] for p in pts], [100 * p["val_acc"] for p in pts], marker="o", ms=3, label=name)
    ax.set_xlabel("wall-clock training time (s, validation included)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def tta_summary(curves: dict[str, list[dict[str, float]]]) -> list[dict[str, Any]]:
    """Per algorithm: best validation accuracy (fraction, and percent as fsmtl train prints it),
    when it was first reached, steps done."""
    rows = []
    for name, pts in curves.items():
        if not pts:
            rows.append({"algorithm": name, "epochs": 0})
            continue
        best = max(pts, key=lambda p: p["val_acc"])
        rows.append({"algorithm": name, "best_val_acc": best["val_acc"], "best_val_acc_pct": 100 * best["val_acc"],
                     "at_wall_s": best["wall_s"], "final_val_acc": pts[-1]["val_acc"],
                     "final_val_acc_pct": 100 * pts[-1]["val_acc"], "steps": pts[-1]["step"], "epochs": len(pts)})
    return rows


def parse_args(argv: list[str], cuda: bool) -> argparse.Namespace:
    from fsmtl.benchmarks.limits import check_batch_fits, check_flags
    from fsmtl.core.device import check_fits

    p = CliParser(prog="fsmtl bench algorithms", description=plain_doc(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="conv4", choices=MODEL_NAMES, help="backbone (default conv4)")
    p.add_argument("--size", type=positive_int, default=None, help="image side (default 32, or --data's)")
    p.add_argument("--ways", type=positive_int, default=5, help="classes per task (default 5)")
    p.add_argument("--shots", type=positive_int, default=5, help="support images per class (default 5)")
    p.add_argument("--queries", type=nonnegative_int, default=5, help="query images per class (default 5)")
    p.add_argument("--tasks", type=positive_int, default=2, help="tasks per optimizer step (default 2)")
    p.add_argument("--algorithms", default=",".join(ALGORITHMS), help="comma-separated (default: all)")
    p.add_argument("--steps", type=positive_int, default=5 if cuda else 1, help="steps per timed run")
    p.add_argument("--runs", type=positive_int, default=5 if cuda else 3, help="timed runs, median taken (default 5 on CUDA, 3 on CPU)")
    p.add_argument("--warmup", type=nonnegative_int, default=2 if cuda else 1, help="untimed runs after the first call")
    p.add_argument("--precision", default="fp32", choices=("auto", "bf16", "fp16", "fp32"), help="autocast precision (default fp32)")
    p.add_argument("--device", type=device_name, default="auto", help="auto (default: cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--skip-tta", action="store_true", help="only (a), the step costs")
    p.add_argument("--minutes", type=float, default=1.5, help="training time per algorithm in (b)")
    p.add_argument("--val-every", type=float, default=15.0, help="seconds between validations in (b)")
    p.add_argument("--val-tasks", type=positive_int, default=50, help="validation tasks per epoch in (b)")
    p.add_argument("--data", type=Path, default=None, help="shards for (b) (default: synthetic at --size)")
    p.add_argument("--out", type=Path, default=Path("runs/bench-algorithms"),
                   help="(b)'s training runs, and the JSON and plots without --json (default runs/bench-algorithms)")
    p.add_argument("--json", type=Path, default=None,
                   help="results JSON, the plots beside it as <name>_*.png (default OUT/algorithms.json)")
    a = p.parse_args(argv)
    if a.queries < 1:
        raise FsmtlError(f"--queries {a.queries}: expected >= 1 (every algorithm's loss needs query images)")
    if a.size is not None and a.size < 16:
        raise FsmtlError(f"--size {a.size}: expected an image side >= 16")
    if a.minutes <= 0 or a.val_every <= 0:
        raise FsmtlError("bench algorithms: expected --minutes > 0 and --val-every > 0")
    check_flags(a, {"--ways": 2, "--tasks": 1, "--steps": 1, "--runs": 1, "--warmup": 0, "--val-tasks": 1},
                {"--minutes": (0.0, True), "--val-every": (0.0, True)}, sides=("--size",))
    check_batch_fits("--tasks/--ways/--shots/--queries/--size", a.tasks * a.ways * (a.shots + a.queries),
                     a.size or 32, a.device)
    picks = a.val_tasks * a.ways * (a.shots + a.queries)  # (b)'s validation tasks' image indices, int64
    check_fits("--val-tasks/--ways/--shots/--queries", f"the {picks:,} image indices of the validation tasks", picks * 8, "cpu")
    return a


def resolve_size(a: argparse.Namespace) -> int:
    """The image side of (a) and (b): --size, or --data's (32 without either). (b) trains on
    --data's images, so a --size that differs from them is refused rather than mislabelled."""
    if a.data is None or a.skip_tta:
        return a.size or 32
    from fsmtl.preprocess.shard_reader import open_shards

    try:
        h, w = (int(v) for v in open_shards(a.data).image_shape[:2])  # checks --data now, before (a)
    except FsmtlError as e:
        raise FsmtlError(f"--data: {e}") from None
    if a.size is not None and a.size != h:
        raise FsmtlError(f"--size {a.size}: --data {a.data} holds {h}x{w} images, which (b) trains on; "
                         f"give --size {h} or leave --size out")  # fmt: skip
    if a.size is None:
        print(f"  image size {h} px: --data {a.data}'s")
    return h


def main(argv: list[str] | None = None) -> int:
    from fsmtl.core.device import CLI_ARGS, autocast_dtype, resolve_device

    a = parse_args(list(argv or []), torch.cuda.is_available())
    names = parse_names("--algorithms", a.algorithms, list(ALGORITHMS))
    a.size = resolve_size(a)
    path = a.json or a.out / "algorithms.json"
    check_writable(path, "--json" if a.json else "--out")
    if not a.skip_tta:
        check_writable_dir(a.out)
    device = resolve_device(a.device, CLI_ARGS)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as fsmtl train sets it
    amp = autocast_dtype(a.precision, device)
    names, skipped = available_algorithms(names)
    for name, why in skipped.items():
        print(f"  skipping {name}: {why}")
    shape = StepShape(a.tasks, a.ways, a.shots, a.queries, False)
    title = f"{a.model} {a.size}px, {a.tasks} x {a.ways}-way {a.shots}+{a.queries}, {device.type}"
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[dict[str, float]]] = {}
    plots: dict[str, str] = {}
    mem = "cuda max_memory_allocated" if device.type == "cuda" else "sampled RSS rise during the steps"

    def save(**extra: Any) -> None:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
        write_results(path, "algorithms", config, rows, device, skipped=skipped, amp_dtype=str(amp), memory_measure=mem,
                      tta_curves=None if a.skip_tta else curves, tta_summary=None if a.skip_tta else tta_summary(curves),
                      plots=plots, **extra)  # fmt: skip

    try:
        step_costs(names, a, shape, device, amp, rows)
        print(format_table(rows, ["algorithm", "s_per_step", "cost_vs_mtl", "images_per_s", "peak_mem_mb", "first_call_s"]))
        from fsmtl.core.plots import plot_bars

        plots["step_cost"] = str(plot_bars([r["algorithm"] for r in rows], [r["s_per_step"] for r in rows],
                                           _plot_path(path, "step_cost"), "seconds per step", title))
        if not a.skip_tta:
            time_to_accuracy(names, a, {r["algorithm"]: r["s_per_step"] for r in rows}, a.out, curves)
    except (KeyboardInterrupt, Exception):
        if not rows:
            raise
        save(partial=True)  # what was measured before the stop or failure is not lost
        print(f"wrote {path} (partial: {len(rows)} step-cost rows, {len(curves)} finished training runs)",
              file=sys.stderr, flush=True)  # fmt: skip
        raise
    if not a.skip_tta:
        summary = tta_summary(curves)
        print(format_table(summary, ["algorithm", "best_val_acc_pct", "at_wall_s", "final_val_acc_pct", "steps", "epochs"]))
        plots["time_to_accuracy"] = str(plot_tta(curves, _plot_path(path, "time_to_accuracy"), title))
    save()
    print(f"wrote {path} and {', '.join(plots.values())}")
    return 0


def _plot_path(json_path: Path, what: str) -> Path:
    """A plot beside the results JSON, named after it: algorithms.json -> algorithms_step_cost.png."""
    return json_path.with_name(f"{json_path.stem}_{what}.png")


if __name__ == "__main__":
    from fsmtl.core.cli import run_stage_main
    sys.exit(run_stage_main(main, sys.argv[1:]))
