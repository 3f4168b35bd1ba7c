"""``fsmtl bench pipeline``: images/s and ms per batch of Lee19-augmented multi-task batches.

Every back end makes the same batches: ``--tasks`` tasks (default 6) of 5 ways x 10 images
(shots 5 + queries 5), at every image size of the data (default: synthetic shards at 84x84x3 and
32x32x3 written to a temporary directory, with FFCV and DALI exports made by our exporters).
Rows: ``torch`` (the default back end: on CPU its numba kernel, on CUDA its fused Triton kernel),
``torch-ops`` (the same back end forced onto torch ops, the measurement behind choosing those
kernels; the ``kernel`` column names what ran), ``dali``, ``ffcv``,
``reference`` (the seed's per-image PIL + torchvision pipeline in a DataLoader with one worker
per core) and ``seed-literal`` (the same, tasks built and augmented in the main process). With
CUDA available, ``torch`` (and ``torch-ops``) also run on the GPU, and ``--step-model`` times one training step of
that model on the same batch for the "share of a training step" figure.
Timing: ``--warmup`` untimed calls, then the median of ``--runs`` timed calls of
``--batches`` batches each, synchronised.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fsmtl.cli import plain_doc
from fsmtl.errors import FsmtlError

ALL = ("torch", "torch-ops", "dali", "ffcv", "reference", "seed-literal")
TARGETS = {"reference": 10.0, "seed-literal": 25.0}  # the CPU speed-ups fsmtl promises at 84x84


def synthetic_roots(out: Path, sizes: tuple[int, ...] = (84, 32), per_class: int = 60) -> list[Path]:
    """Write synthetic shards (84x84x3 and 32x32x3 by default) with FFCV/DALI exports of their train split."""
    from preprocess.export_dali import export_split_dali
    from preprocess.shards import ShardWriter, open_shards
    from preprocess.synthetic import SyntheticConfig, generate_split

    roots = []
    for size in sizes:
        root = out / f"synthetic{size}"
        cfg = SyntheticConfig(image_size=size, classes=(16, 5, 5), per_class=per_class, seed=size)
        with ShardWriter(root, f"synthetic{size}") as w:
            for split in ("train", "val", "test"):
                w.write_split(split, *generate_split(cfg, split))
            w.commit()
        split = open_shards(root).split("train")
        try:
            from preprocess.export_ffcv import export_split_ffcv

            export_split_ffcv(split, root / "train" / "data.beton")
        except (ImportError, FsmtlError) as e:
            print(f"(no FFCV export: {e})")
        export_split_dali(split, root / "train" / "dali")
        roots.append(root)
    return roots


def _loader(name: str, split: Any, mean: Any, std: Any, cfg: Any) -> Any:
    from pipelines.backend_torch import TorchBackend
    from pipelines.loader import TaskLoader, build_task_loader, check_request

    if name == "torch-ops":
        pad = check_request(split, mean, std, cfg)
        return TaskLoader(TorchBackend(split, list(mean), list(std), cfg, pad, cpu_kernel="torch"), cfg)
    if name == "seed-literal":
        return build_task_loader(split, mean, std, replace(cfg, backend="reference", workers=0))
    return build_task_loader(split, mean, std, replace(cfg, backend=name))


def _step_ms(model_name: str, batch: Any, device: torch.device, warmup: int, runs: int) -> float:
    """Median ms of one forward + backward + optimizer step on ``batch`` (bf16 autocast)."""
    from benchmarks.common import median, time_runs
    from models import build_model

    x = batch.images
    model = build_model(model_name, in_channels=x.shape[1], image_size=x.shape[-1]).to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(x).float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return 1e3 * median(time_runs(step, device, warmup, runs))


def open_shards_size(root: Path) -> int:
    from preprocess.shards import open_shards

    return int(open_shards(root).image_shape[0])


def measure(name: str, root: Path, cfg: Any, args: argparse.Namespace) -> dict[str, Any]:
    """One row: the back end ``name`` on ``root``'s train split."""
    from benchmarks.common import median, time_windows
    from preprocess.shards import open_shards

    shards = open_shards(root)
    split = shards.split("train")
    loader = _loader(name, split, shards.mean, shards.std, cfg)
    # whole batch groups per window (the CUDA path makes several batches per launch): a window
    # that held more groups than another would be charged for batches it did not hand out
    group = int(getattr(loader.backend, "group", 1))
    k = -(-args.batches // group) * group
    try:
        # back-to-back windows: a loader's prefetch cannot fill up between timed runs
        secs = time_windows(lambda: [next(loader) for _ in range(k)], cfg.device, args.warmup, args.runs)
        row = {
            "size": shards.image_shape[0],
            "backend": name,
            "device": cfg.device,
            "workers": 0 if name == "seed-literal" else (cfg.workers if name in ("reference", "dali", "ffcv") else "-"),
            "images_per_s": cfg.batch_images * k / median(secs),
            "ms_per_batch": 1e3 * median(secs) / k,
            "runs_s": secs,
            "batches_per_window": k,
        }
        if hasattr(loader.backend, "kernel"):
            row["kernel"] = loader.backend.kernel
        if name in ("reference", "seed-literal"):
            row["tasks_from"] = "learn2learn" if getattr(loader.backend, "use_learn2learn", False) else "fsmtl sampler"
        if args.step_model and cfg.device != "cpu":
            step = _step_ms(args.step_model, next(loader), torch.device(cfg.device), args.warmup, args.runs)
            row["step_ms"] = step
            row["pipeline_share_of_step"] = row["ms_per_batch"] / step
        return row
    finally:
        loader.close()


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Speed-up of each row over ``reference`` and ``seed-literal`` at the same size (CPU)."""
    for size in {r["size"] for r in rows}:
        base = {r["backend"]: r["images_per_s"] for r in rows if r["size"] == size and r["device"] == "cpu" and r.get("images_per_s")}
        for r in rows:
            if r["size"] != size or not r.get("images_per_s"):
                continue
            for ref in TARGETS:
                if ref in base:
                    r[f"x_vs_{ref}"] = r["images_per_s"] / base[ref]


def main(argv: list[str]) -> int:
    from benchmarks.common import format_table, hardware_info, nonnegative_int, positive_int, write_results
    from pipelines.loader import PipelineConfig, default_workers

    p = argparse.ArgumentParser(prog="fsmtl bench pipeline", description=plain_doc(__doc__))
    p.add_argument("--data", nargs="+", type=Path, help="shard directories (default: synthetic 84 and 32 px)")
    p.add_argument("--sizes", default="84,32", help="image sizes of the synthetic shards (without --data)")
    p.add_argument("--backends", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    p.add_argument("--tasks", type=positive_int, default=6, help="tasks per batch (meta_batch_size)")
    p.add_argument("--ways", type=positive_int, default=5, help="classes per task (default 5)")
    p.add_argument("--shots", type=positive_int, default=5, help="support images per class (default 5)")
    p.add_argument("--queries", type=nonnegative_int, default=5, help="query images per class (default 5)")
    p.add_argument("--workers", type=positive_int, default=None, help="reference/dali/ffcv workers (default: cores)")
    p.add_argument("--batches", type=positive_int, default=4, help="batches per timed run")
    p.add_argument("--warmup", type=nonnegative_int, default=2, help="untimed calls first (default 2)")
    p.add_argument("--runs", type=positive_int, default=5, help="timed runs, median taken (default 5)")
    p.add_argument("--device", default=None, help="also run the torch back end here (default: cuda if available)")
    p.add_argument("--step-model", default="resnet12", help="on CUDA, time a training step of this model ('' = off)")
    p.add_argument("--json", type=Path, default=None, help="write the results here (default: not written)")
    args = p.parse_args(argv)
    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in names if b not in ALL]
    if bad:
        raise FsmtlError(f"--backends: unknown {bad}; choose from {', '.join(ALL)}")
    cfg = PipelineConfig(ways=args.ways, shots=args.shots, queries=args.queries, tasks_per_batch=args.tasks, workers=args.workers)
    cfg = replace(cfg, workers=default_workers(cfg))
    gpu = args.device or ("cuda" if torch.cuda.is_available() else None)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fsmtl-bench-pipeline-") as tmp:
        roots = args.data or synthetic_roots(Path(tmp), tuple(int(v) for v in args.sizes.split(",")))
        jobs = [(root, name, cfg) for root in roots for name in names]
        if gpu and gpu != "cpu":
            jobs += [(root, name, replace(cfg, device=gpu)) for root in roots for name in ("torch", "torch-ops") if name in names]
        # the back ends that fork DataLoader workers go first: forking after numba's TBB threads have
        # started (the torch back end's CPU kernel) is unsafe for the children, and numba warns of it
        order = sorted(range(len(jobs)), key=lambda i: jobs[i][1] != "reference")
        done: dict[int, dict[str, Any]] = {}
        for i in order:
            root, name, jcfg = jobs[i]
            try:
                r = done[i] = measure(name, root, jcfg, args)
            except FsmtlError:
                raise  # a bad request (a back end not installed, ...): the user's to fix
            except Exception as e:  # noqa: BLE001 - one broken back end must not lose the other rows
                size = open_shards_size(root)
                done[i] = {"size": size, "backend": name, "device": jcfg.device, "images_per_s": None,
                           "error": f"{type(e).__name__}: {str(e).strip()[:200]}"}  # fmt: skip
                print(f"{size}px {name} ({jcfg.device}): FAILED {done[i]['error']}", flush=True)
                continue
            print(f"{r['size']}px {name} ({r['device']}): {r['images_per_s']:,.0f} images/s, {r['ms_per_batch']:.2f} ms/batch", flush=True)
        rows = [done[i] for i in range(len(jobs))]
    add_speedups(rows)
    print(format_table(rows, [c for c in _COLUMNS if any(c in r for r in rows)]))
    hw = hardware_info(gpu or "cpu")
    print(f"# {hw['cpu']} ({hw['cpu_count']} cores, {hw['torch_threads']} torch threads){', ' + hw['gpu'] if 'gpu' in hw else ''}")
    for size in sorted({r["size"] for r in rows}, reverse=True):
        torch_cpu = [r for r in rows if r["size"] == size and r["backend"] == "torch" and r["device"] == "cpu"]
        for ref, target in TARGETS.items():
            key = f"x_vs_{ref}"
            if torch_cpu and key in torch_cpu[0]:
                got = torch_cpu[0][key]
                print(f"{size}px: torch is {got:.1f}x {ref} (target >= {target:.0f}x): {'PASS' if got >= target else 'FAIL'}")
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config["data"] = [str(r) for r in args.data] if args.data else "synthetic (84x84x3 and 32x32x3, 16 train classes x 60)"
    write_results(args.json, "pipeline", config, rows, gpu or "cpu", targets=TARGETS, packages=_versions())
    return 0


def _versions() -> dict[str, str | None]:
    """Installed versions of the packages behind each back end (without importing them)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for dist in ("ffcv", "nvidia-dali-cuda130", "learn2learn", "pillow", "torchvision", "numba", "triton"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


_COLUMNS = ["size", "backend", "kernel", "device", "workers", "tasks_from", "images_per_s", "ms_per_batch", "x_vs_reference", "x_vs_seed-literal", "step_ms", "pipeline_share_of_step", "error"]
