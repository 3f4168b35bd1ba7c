"""``fsmtl demo``: the main job on the embedded synthetic data, end to end, with a report.

Steps (each through the same code as its own command):

1. ``fsmtl convert synthetic`` into ``RUN/data`` (reused when it is already there and verifies);
2. ``fsmtl train --preset demo`` into ``RUN/train`` (on a GPU: ResNet-12 and a longer budget);
3. ``fsmtl eval`` of the best checkpoint (last.pt if no epoch was validated), 1-shot and 5-shot, with the logreg head and the other
   feature heads for comparison;
4. ``fsmtl bench pipeline`` on the same shards, for every installed back end;
5. ``RUN/report.md`` with the numbers and PNG plots, and a one-screen summary.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsmtl.core.cli import CliParser, plain_doc
from fsmtl.core.device import CLI_ARGS, resolve_device
from fsmtl.core.errors import FsmtlError
from fsmtl.core.plots import plot_bars
from fsmtl.report import load_metrics, plot_curves


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs; the defaults take about 4 minutes on a 2-core CPU (installation aside)."""

    out: str = "runs/demo"
    image_size: int = 32
    classes: str = "64,16,20"
    per_class: int = 120
    minutes: float | None = None  # training budget; None: the preset's (CPU) or 15 (GPU)
    tasks: int = 500  # test tasks per shot count
    heads: tuple[str, ...] = ("logreg", "proto", "ridge", "svm")
    device: str = "auto"
    bench: bool = True
    force: bool = False

    def __post_init__(self) -> None:
        """Check every setting now, before any work, with the stages' own checks and messages."""
        from fsmtl.core.checks import check_real
        from fsmtl.eval.config import EvalConfig
        from fsmtl.preprocess.config import PreprocessConfig

        try:
            classes = tuple(int(c) for c in self.classes.split(","))
        except ValueError:
            raise FsmtlError(f"--classes: expected three comma-separated integers, got {self.classes!r}") from None
        PreprocessConfig("synthetic", Path(self.out) / "data", size=self.image_size, classes=classes,  # type: ignore[arg-type]
                         per_class=self.per_class)  # fmt: skip
        EvalConfig(tasks=self.tasks, device=self.device, heads=self.heads)
        if self.minutes is not None:
            check_real(self.minutes, "--minutes", 0.0, lo_open=True)


def _step(title: str) -> float:
    print(f"\n==> {title}", flush=True)
    return time.perf_counter()


def _call(main: Any, argv: list[str], what: str) -> None:
    rc = main(argv)
    if rc:
        raise FsmtlError(f"demo: {what} failed with exit code {rc}")


def _data(cfg: DemoConfig, run: Path) -> Path:
    from fsmtl.preprocess.__main__ import main as preprocess_main
    from fsmtl.preprocess.shard_reader import open_shards
    from fsmtl.preprocess.shard_verify import verify_shards

    data = run / "data"
    if data.exists() and not cfg.force:
        try:
            meta = open_shards(data).meta
            same = meta["image_shape"][0] == cfg.image_size and not verify_shards(data)
        except FsmtlError:
            same = False
        if same:
            print(f"reusing {data} (verified)")
            return data
        raise FsmtlError(f"{data}: exists but is not this demo's data (pass --force to rebuild)")
    _call(preprocess_main, ["convert", "synthetic", "--out", str(data), "--size", str(cfg.image_size),
                            "--classes", cfg.classes, "--per-class", str(cfg.per_class),
                            *(["--force"] if cfg.force else [])], "convert")  # fmt: skip
    return data


def _train_args(cfg: DemoConfig, data: Path, out: Path, cuda: bool) -> list[str]:
    # the demo owns RUN/train: a second demo retrains it from scratch
    args = ["--data", str(data), "--preset", "demo", "--out", str(out), "--device", cfg.device, "--overwrite"]
    if cuda:  # bigger and longer on a GPU: the seed's backbone
        args += ["--model", "resnet12", "--epoch-length", "1200", "--max-epochs", "30"]  # 200 steps
        args += ["--max-minutes", str(cfg.minutes or 15.0)]
    elif cfg.minutes is not None:
        args += ["--max-minutes", str(cfg.minutes)]
    return args


def _pct(v: float | None) -> float | None:
    """Accuracies are logged as fractions by train/ and as percent by eval/: show percent."""
    return None if v is None else (v * 100.0 if v <= 1.0 else v)


def _write_report(run: Path, train_dir: Path, ev: dict[str, Any], bench: dict[str, Any] | None, seconds: dict[str, float]) -> Path:
    # a budget that ends the first epoch early leaves only the final validation's line: say so
    rows = load_metrics(train_dir) if (train_dir / "metrics.jsonl").is_file() else []
    if any(not r.get("final") for r in rows):
        plot_curves(rows, run / "curves.png", title="fsmtl demo: synthetic data")
        trained = f"{rows[-1].get('epoch')} epochs, {rows[-1].get('step')} steps"
    else:
        trained = "stopped by its time budget inside the first epoch: no epoch completed, its final weights evaluated"
    lines = ["# fsmtl demo report", "",
             f"Synthetic few-shot data, trained by multi-task learning ({trained}), evaluated on "
             f"{ev['config']['tasks']} fixed test tasks per shot count ({ev['config']['ways']}-way, "
             f"{ev['config']['queries']} queries).", "",
             "## Test accuracy (%, 95% interval)", "", "| shots | head | accuracy | tasks |", "| --- | --- | --- | --- |"]  # fmt: skip
    pictures = []
    for shots, heads in ev["results"].items():
        for head, r in heads.items():
            lines.append(f"| {shots} | {head} | {r['acc']:.2f} ± {r['ci95']:.2f} | {r['n_tasks']} |")
        names = list(heads)
        plot_bars(names, [heads[h]["acc"] for h in names], run / f"heads_{shots}shot.png",
                  "accuracy (%)", f"{shots}-shot accuracy per head", [heads[h]["ci95"] for h in names])
        pictures.append(f"![{shots}-shot accuracy per head](heads_{shots}shot.png)")
    lines += ["", *pictures, ""]
    lines += ["## Training", ""]
    if rows:
        lines += ["![training curves](curves.png)", "",
                  "| epoch | train loss | val acc (%) | images/s | data wait | wall (s) |", "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    else:
        lines += ["No epoch completed within the time budget (`--minutes`): no curves."]
    for r in rows:
        va = _pct(r.get("val_acc"))
        lines.append(f"| {r.get('epoch')} | {r.get('train_loss', float('nan')):.3f} | "
                     f"{'' if va is None else f'{va:.1f}'} | {r.get('images_per_s', 0):,.0f} | "
                     f"{100 * r.get('data_wait_frac', 0):.1f}% | {r.get('wall_s', 0):.0f} |")  # fmt: skip
    if bench and bench.get("rows"):
        brs = [b for b in bench["rows"] if b.get("images_per_s")]
        labels = [f"{b.get('backend')} {b.get('size', '')}px".strip() for b in brs]
        plot_bars(labels, [b["images_per_s"] for b in brs], run / "pipelines.png", "images/s (log)",
                  "Lee19-augmented task batches per back end", log=True)
        lines += ["", "## Pipeline back ends", "", "![images/s per back end](pipelines.png)", "",
                  "| back end | size | images/s | ms/batch |", "| --- | --- | --- | --- |"]  # fmt: skip
        for b, label in zip(brs, labels):
            lines.append(f"| {b.get('backend')} | {b.get('size', '')} | {b['images_per_s']:,.0f} | {b.get('ms_per_batch', float('nan')):.1f} |")
    lines += ["", "## Time per stage (s)", "", *[f"- {k}: {v:.0f}" for k, v in seconds.items()], ""]
    path = run / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run every step; returns the summary that is also printed."""
    from fsmtl.eval.__main__ import main as eval_main
    from fsmtl.train.__main__ import main as train_main

    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    cuda = resolve_device(cfg.device, CLI_ARGS).type == "cuda"
    seconds: dict[str, float] = {}
    t = _step("1/5 synthetic data")
    data = _data(cfg, run)
    seconds["data"] = time.perf_counter() - t
    t = _step("2/5 training (multi-task learning)")
    train_dir = run / "train"
    if train_dir.exists() and cfg.force:
        import shutil

        shutil.rmtree(train_dir)
    _call(train_main, _train_args(cfg, data, train_dir, cuda), "training")
    seconds["train"] = time.perf_counter() - t
    t = _step("3/5 evaluation on fixed test tasks")
    ev_path = run / "eval.json"
    # best.pt exists once an epoch was validated; a budget that ended the first epoch early leaves last.pt
    ckpt = "best" if (train_dir / "checkpoints" / "best.pt").is_file() else "last"
    _call(eval_main, ["--run", str(train_dir), "--checkpoint", ckpt, "--shots", "1", "5", "--tasks", str(cfg.tasks),
                      "--head", *cfg.heads, "--device", cfg.device, "--json", str(ev_path)], "evaluation")  # fmt: skip
    ev = json.loads(ev_path.read_text())
    seconds["eval"] = time.perf_counter() - t
    bench = None
    if cfg.bench:
        t = _step("4/5 pipeline back ends")
        bench = _bench(data, run)
        seconds["bench"] = time.perf_counter() - t
    _step("5/5 report")
    report = _write_report(run, train_dir, ev, bench, seconds)
    summary = {"report": str(report), "seconds": seconds,
               "test_acc": {s: {h: r["acc"] for h, r in hs.items()} for s, hs in ev["results"].items()}}  # fmt: skip
    return summary


def _bench(data: Path, run: Path) -> dict[str, Any] | None:
    out = run / "bench_pipeline.json"
    backends = ["torch", "reference"]
    for name, mod in (("dali", "nvidia.dali"), ("ffcv", "ffcv")):
        # find_spec, not import: importing ffcv would pin torch and numba to one thread
        if importlib.util.find_spec(mod) is not None:
            backends.append(name)
        else:
            print(f"({name} not installed: skipped)")
    argv = ["--data", str(data), "--backends", ",".join(backends), "--runs", "3",
            "--batches", "2", "--warmup", "1", "--step-model", "", "--json", str(out)]  # fmt: skip
    # a fresh process: training already started numba's threads here, and the reference back end
    # forks DataLoader workers (unsafe after them); its timings are not disturbed by this one either
    rc = subprocess.run([sys.executable, "-m", "fsmtl.benchmarks", "pipeline", *argv], check=False).returncode
    return json.loads(out.read_text()) if rc == 0 and out.exists() else None


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="fsmtl demo", description=plain_doc(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    d = DemoConfig()
    p.add_argument("--out", default=d.out, help=f"run directory (default {d.out})")
    p.add_argument("--size", dest="image_size", type=int, default=d.image_size, help="synthetic image size")
    p.add_argument("--classes", default=d.classes, help="synthetic classes per split train,val,test")
    p.add_argument("--per-class", type=int, default=d.per_class, help="synthetic images per class")
    p.add_argument("--minutes", type=float, default=d.minutes, help="training budget in minutes")
    p.add_argument("--tasks", type=int, default=d.tasks, help="test tasks per shot count")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda[:N]")
    p.add_argument("--no-bench", dest="bench", action="store_false", help="skip the pipeline benchmark")
    p.add_argument("--force", action="store_true", help="rebuild data and retrain from scratch")
    a = p.parse_args(argv)
    cfg = DemoConfig(**vars(a))
    t0 = time.perf_counter()
    summary = run_demo(cfg)
    print("\n" + "=" * 64)
    print(f"fsmtl demo finished in {(time.perf_counter() - t0) / 60:.1f} min")
    for shots, heads in summary["test_acc"].items():
        accs = ", ".join(f"{h} {a:.1f}%" for h, a in heads.items())
        print(f"  {shots}-shot test accuracy: {accs}   (chance 20.0%)")
    print(f"  report: {summary['report']}")
    print("=" * 64)
    return 0
