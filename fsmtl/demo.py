"""``fsmtl demo``: the main job on embedded real images (Omniglot), end to end, with a report.

Steps (each through the same code as its own command):

1. ``fsmtl convert omniglot`` of the two embedded background_small zips (checked against their
   SHA256SUMS) into ``RUN/data`` with the converter's defaults: 5 alphabets (with rotations as new
   classes) to train on, Korean held out for validation, Latin and Sanskrit for test (reused when
   it is already there and verifies);
2. ``fsmtl train --preset omniglot`` into ``RUN/train`` for a short budget;
3. ``fsmtl eval`` of the best checkpoint on the unseen test alphabets: 20-way 1-shot and 5-way
   5-shot, every task's characters from one alphabet (Lake et al.'s within-alphabet protocol), with
   the logreg head and the other feature heads for comparison;
4. ``fsmtl bench pipeline`` on the same shards, for every installed back end;
5. ``RUN/report.md`` with the numbers and PNG plots, and a one-screen summary.

``--source synthetic`` runs the same steps on the synthetic generator's data (``--classes``,
``--per-class``; 5-way 1- and 5-shot), as the tests do.
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
from fsmtl.core.embedded import EMBEDDED_OMNIGLOT, check_embedded_omniglot
from fsmtl.core.plots import plot_bars
from fsmtl.report import load_metrics, plot_curves

SOURCES = ("omniglot", "synthetic")
OMNIGLOT_MINUTES = 2.5  # the demo's CPU training budget on Omniglot (the preset's is 10)
# (ways, shots) of the test tasks, per source
TEST_TASKS: dict[str, tuple[tuple[int, int], ...]] = {"omniglot": ((20, 1), (5, 5)), "synthetic": ((5, 1), (5, 5))}


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs; the defaults take about 4 minutes on a 2-core CPU (installation aside)."""

    out: str = "runs/demo"
    source: str = "omniglot"  # the embedded Omniglot zips, or "synthetic"
    image_size: int | None = None  # None: the converter's default (32 for omniglot, 84 for synthetic)
    classes: str | None = None  # synthetic only: classes per split (None: 64,16,20)
    per_class: int | None = None  # synthetic only: images per class (None: 120)
    minutes: float | None = None  # training budget; None: 2.5 (Omniglot), the demo preset's (synthetic), 15 (GPU)
    tasks: int = 500  # test tasks per task shape
    heads: tuple[str, ...] = ("logreg", "proto", "ridge", "svm")
    device: str = "auto"
    bench: bool = True
    force: bool = False

    def __post_init__(self) -> None:
        """Check every setting now, before any work, with the stages' own checks and messages."""
        from fsmtl.core.checks import check_real
        from fsmtl.eval.config import EvalConfig
        from fsmtl.preprocess.config import PreprocessConfig

        if self.source not in SOURCES:
            raise FsmtlError(f"--source: expected one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.source == "synthetic":
            PreprocessConfig("synthetic", Path(self.out) / "data", size=self.image_size or 32,
                             classes=self.synthetic_classes, per_class=self.per_class or 120)  # fmt: skip
        else:
            for flag, value in (("--classes", self.classes), ("--per-class", self.per_class)):
                if value is not None:
                    raise FsmtlError(f"{flag}: only for --source synthetic (the Omniglot demo uses the embedded alphabets)")
            PreprocessConfig("omniglot", Path(self.out) / "data", src=EMBEDDED_OMNIGLOT, size=self.image_size)
        EvalConfig(tasks=self.tasks, device=self.device, heads=self.heads)
        if self.minutes is not None:
            check_real(self.minutes, "--minutes", 0.0, lo_open=True)

    @property
    def synthetic_classes(self) -> tuple[int, int, int]:
        """``--classes`` as (train, val, test) counts."""
        try:
            train, val, test = (int(c) for c in (self.classes or "64,16,20").split(","))
        except ValueError:
            raise FsmtlError(f"--classes: expected three comma-separated integers, got {self.classes!r}") from None
        return train, val, test


def _step(title: str) -> float:
    print(f"\n==> {title}", flush=True)
    return time.perf_counter()


def _call(main: Any, argv: list[str], what: str) -> None:
    rc = main(argv)
    if rc:
        raise FsmtlError(f"demo: {what} failed with exit code {rc}")


def _data(cfg: DemoConfig, run: Path) -> Path:
    from fsmtl.preprocess.__main__ import main as preprocess_main
    from fsmtl.preprocess.shard_verify import reusable_shards

    data = run / "data"
    if data.exists() and not cfg.force:
        if reusable_shards(data, cfg.source, cfg.image_size):
            print(f"reusing {data} (verified)")
            return data
        raise FsmtlError(f"{data}: exists but is not this demo's data (pass --force to rebuild)")
    size = [] if cfg.image_size is None else ["--size", str(cfg.image_size)]
    force = ["--force"] if cfg.force else []
    if cfg.source == "omniglot":
        check_embedded_omniglot()
        _call(preprocess_main, ["convert", "omniglot", "--src", str(EMBEDDED_OMNIGLOT), "--out", str(data), *size, *force], "convert")
    else:
        _call(preprocess_main, ["convert", "synthetic", "--out", str(data), *size, "--classes",
                                ",".join(map(str, cfg.synthetic_classes)), "--per-class", str(cfg.per_class or 120),
                                *force], "convert")  # fmt: skip
    return data


def _train_args(cfg: DemoConfig, data: Path, out: Path, cuda: bool) -> list[str]:
    # the demo owns RUN/train: a second demo retrains it from scratch
    preset = "omniglot" if cfg.source == "omniglot" else "demo"
    args = ["--data", str(data), "--preset", preset, "--out", str(out), "--device", cfg.device, "--overwrite"]
    if cfg.source == "omniglot":
        # validated on the val alphabet, for the report's learning curve (the preset's final recipe
        # trains on it instead, without validation)
        args += ["--max-minutes", str(cfg.minutes or OMNIGLOT_MINUTES), "--no-trainval", "--val-split", "val"]
    elif cuda:  # bigger and longer on a GPU: the seed's backbone
        args += ["--model", "resnet12", "--epoch-length", "1200", "--max-epochs", "30"]  # 200 steps
        args += ["--max-minutes", str(cfg.minutes or 15.0)]
    elif cfg.minutes is not None:
        args += ["--max-minutes", str(cfg.minutes)]
    return args


def _pct(v: float | None) -> float | None:
    """Accuracies are logged as fractions by train/ and as percent by eval/: show percent."""
    return None if v is None else (v * 100.0 if v <= 1.0 else v)


def _task_label(ev: dict[str, Any], shots: str) -> str:
    """'20-way 1-shot' (plus ', within one alphabet' for grouped tasks) of one eval report's result."""
    c = ev["config"]
    group = "alphabet" if ev.get("demo_source") == "omniglot" else "group"
    return f"{c['ways']}-way {shots}-shot" + (f", within one {group}" if c.get("within_group") else "")


def _describe_data(cfg: DemoConfig) -> str:
    if cfg.source == "omniglot":
        return ("Omniglot (the embedded background_small1 + small2 zips, MIT licence): trained on 5 alphabets with "
                "rotations as new classes, validated on Korean, tested on the unseen Latin and Sanskrit alphabets, "
                "every task's characters from one alphabet")  # fmt: skip
    return "Synthetic few-shot data"


def _write_report(cfg: DemoConfig, run: Path, train_dir: Path, evals: list[dict[str, Any]], bench: dict[str, Any] | None,
                  seconds: dict[str, float]) -> Path:  # fmt: skip
    # a budget that ends the first epoch early leaves only the final validation's line: say so
    rows = load_metrics(train_dir) if (train_dir / "metrics.jsonl").is_file() else []
    if any(not r.get("final") for r in rows):
        plot_curves(rows, run / "curves.png", title=f"fsmtl demo: {cfg.source}")
        trained = f"{rows[-1].get('epoch')} epochs, {rows[-1].get('step')} steps"
    else:
        trained = "stopped by its time budget inside the first epoch: no epoch completed, its final weights evaluated"
    ev0 = evals[0]["config"]
    lines = ["# fsmtl demo report", "",
             f"{_describe_data(cfg)}; trained by multi-task learning ({trained}), evaluated on "
             f"{ev0['tasks']} fixed test tasks per task shape ({ev0['queries']} queries a class).", "",
             "## Test accuracy (%, 95% interval)", "", "| task | head | accuracy | tasks |", "| --- | --- | --- | --- |"]  # fmt: skip
    pictures = []
    for ev in evals:
        for shots, heads in ev["results"].items():
            label = _task_label(ev, shots)
            for head, r in heads.items():
                lines.append(f"| {label} | {head} | {r['acc']:.2f} ± {r['ci95']:.2f} | {r['n_tasks']} |")
            names = list(heads)
            png = f"heads_{ev['config']['ways']}way_{shots}shot.png"
            plot_bars(names, [heads[h]["acc"] for h in names], run / png, "accuracy (%)", f"{label}: accuracy per head",
                      [heads[h]["ci95"] for h in names])  # fmt: skip
            pictures.append(f"![{label} accuracy per head]({png})")
    lines += ["", *pictures, ""]
    lines += ["## Training", ""]
    if rows and (run / "curves.png").is_file():
        lines += ["![training curves](curves.png)", "",
                  "| epoch | step | train loss | val acc (%) | images/s | data wait | wall (s) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    else:
        lines += ["No epoch completed within the time budget (`--minutes`): no curves.", "",
                  "| epoch | step | train loss | val acc (%) | images/s | data wait | wall (s) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        va = _pct(r.get("val_acc"))
        epoch = f"{r.get('epoch')}{' (final)' if r.get('final') else ''}"
        lines.append(f"| {epoch} | {r.get('step')} | {r.get('train_loss', float('nan')):.3f} | "
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
    t = _step(f"1/5 {cfg.source} data")
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
    # best.pt exists once a validation ran (the final one of a budget-stopped run too); else last.pt
    ckpt = "best" if (train_dir / "checkpoints" / "best.pt").is_file() else "last"
    evals = []
    for ways, shots in TEST_TASKS[cfg.source]:
        ev_path = run / f"eval_{ways}way_{shots}shot.json"
        _call(eval_main, ["--run", str(train_dir), "--checkpoint", ckpt, "--ways", str(ways), "--shots", str(shots),
                          "--tasks", str(cfg.tasks), "--head", *cfg.heads, "--device", cfg.device, "--json", str(ev_path)],
              "evaluation")  # fmt: skip
        evals.append({**json.loads(ev_path.read_text()), "demo_source": cfg.source})
    seconds["eval"] = time.perf_counter() - t
    bench = None
    if cfg.bench:
        t = _step("4/5 pipeline back ends")
        bench = _bench(data, run)
        seconds["bench"] = time.perf_counter() - t
    _step("5/5 report")
    report = _write_report(cfg, run, train_dir, evals, bench, seconds)
    test_acc = {_task_label(ev, shots): {h: r["acc"] for h, r in hs.items()} for ev in evals for shots, hs in ev["results"].items()}
    chance = {_task_label(ev, shots): 100.0 / ev["config"]["ways"] for ev in evals for shots in ev["results"]}
    return {"report": str(report), "seconds": seconds, "test_acc": test_acc, "chance": chance}


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
    p.add_argument("--source", choices=SOURCES, default=d.source,
                   help="the embedded Omniglot zips (default) or the synthetic generator")
    p.add_argument("--size", dest="image_size", type=int, default=d.image_size, help="image size (default: the converter's)")
    p.add_argument("--classes", default=d.classes, help="synthetic: classes per split train,val,test (default 64,16,20)")
    p.add_argument("--per-class", type=int, default=d.per_class, help="synthetic: images per class (default 120)")
    p.add_argument("--minutes", type=float, default=d.minutes,
                   help=f"training budget in minutes (default: {OMNIGLOT_MINUTES:g} on Omniglot, the demo preset's on synthetic data)")
    p.add_argument("--tasks", type=int, default=d.tasks, help="test tasks per task shape")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda[:N]")
    p.add_argument("--no-bench", dest="bench", action="store_false", help="skip the pipeline benchmark")
    p.add_argument("--force", action="store_true", help="rebuild data and retrain from scratch")
    a = p.parse_args(argv)
    cfg = DemoConfig(**vars(a))
    t0 = time.perf_counter()
    summary = run_demo(cfg)
    print("\n" + "=" * 64)
    print(f"fsmtl demo finished in {(time.perf_counter() - t0) / 60:.1f} min")
    for label, heads in summary["test_acc"].items():
        accs = ", ".join(f"{h} {a:.1f}%" for h, a in heads.items())
        print(f"  {label} test accuracy: {accs}   (chance {summary['chance'][label]:.1f}%)")
    print(f"  report: {summary['report']}")
    print("=" * 64)
    return 0
