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
Timing: one untimed first batch (numba's JIT, worker and FFCV start-up), ``--warmup`` untimed
calls, then the median of ``--runs`` timed calls of ``--batches`` batches each, synchronised.
PASS/FAIL verdicts against the CPU targets are printed at 84x84, the size they are set for.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fsmtl.core.device import cpu_workers
from fsmtl.core.cli import CliParser, plain_doc
from fsmtl.core.errors import FsmtlError

ALL = ("torch", "torch-ops", "dali", "ffcv", "reference", "seed-literal")
TARGETS = {"reference": 10.0, "seed-literal": 25.0}  # the CPU speed-ups fsmtl promises at 84x84
TARGET_SIZE = 84  # the image side TARGETS are set for
BACKEND_OF = {"torch-ops": "torch", "seed-literal": "reference"}  # row name -> the back end it runs


def synthetic_roots(out: Path, sizes: tuple[int, ...] = (84, 32), per_class: int = 60,
                    exports: tuple[str, ...] = ("ffcv", "dali")) -> list[Path]:
    """Write synthetic shards (84x84x3 and 32x32x3 by default) with the FFCV/DALI exports of their
    train split named in ``exports``."""
    from fsmtl.preprocess.export_dali import export_split_dali
    from fsmtl.preprocess.shard_reader import open_shards
    from fsmtl.preprocess.shard_writer import ShardWriter
    from fsmtl.preprocess.synthetic import SyntheticConfig, generate_split

    roots = []
    for size in sizes:
        root = out / f"synthetic{size}"
        cfg = SyntheticConfig(image_size=size, classes=(16, 5, 5), per_class=per_class, seed=size)
        with ShardWriter(root, f"synthetic{size}") as w:
            for split in ("train", "val", "test"):
                w.write_split(split, *generate_split(cfg, split))
            w.commit()
        split = open_shards(root).split("train")
        if "ffcv" in exports:
            try:
                from fsmtl.preprocess.export_ffcv import export_split_ffcv

                export_split_ffcv(split, root / "train" / "data.beton")
            except (ImportError, FsmtlError) as e:
                print(f"(no FFCV export: {e})")
        if "dali" in exports:
            export_split_dali(split, root / "train" / "dali")
        roots.append(root)
    return roots


def open_ffcv_loaders(jobs: list[tuple[Path, str, Any]]) -> dict[int, Any]:
    """The ``ffcv`` rows' loaders, made before anything is measured: a split without a converted
    .beton is exported on the fly, and FFCV's writer forks, which is unsafe once numba's threads
    have started (any measured back end running the numba kernel); numba warns of it. Maps a job's
    index to its loader, or to the exception that building it raised (that row reports it)."""
    from fsmtl.preprocess.shard_reader import open_shards

    out: dict[int, Any] = {}
    for i, (root, name, cfg) in enumerate(jobs):
        if name == "ffcv":
            shards = open_shards(root)
            try:
                out[i] = _loader(name, shards.split("train"), shards.mean, shards.std, cfg)
            except FsmtlError:
                raise
            except Exception as e:  # noqa: BLE001 - reported as that row's error
                out[i] = e
    return out


def check_jobs(jobs: list[tuple[Path, str, Any]], flag: str = "--data") -> None:
    """Open every shard directory and check every row's request before anything is measured: a
    bad directory, a missing back end or an impossible task shape fails now, not after minutes."""
    from fsmtl.pipelines.config import check_request
    from fsmtl.preprocess.shard_reader import open_shards

    for root, name, cfg in jobs:
        try:
            shards = open_shards(root)
            check_request(shards.split("train"), shards.mean, shards.std, replace(cfg, backend=BACKEND_OF.get(name, name)))
        except FsmtlError as e:
            msg = str(e) if str(root) in str(e) else f"{root}: {e}"
            raise FsmtlError(f"{flag}: {msg}" if flag else msg) from None


def _loader(name: str, split: Any, mean: Any, std: Any, cfg: Any) -> Any:
    from fsmtl.pipelines.backend_torch import TorchBackend
    from fsmtl.pipelines.config import check_request
    from fsmtl.pipelines.loader import TaskLoader, build_task_loader
    if name == "torch-ops":
        pad = check_request(split, mean, std, cfg)
        return TaskLoader(TorchBackend(split, list(mean), list(std), cfg, pad, cpu_kernel="torch"), cfg)
    if name == "seed-literal":
        return build_task_loader(split, mean, std, replace(cfg, backend="reference", workers=0))
    return build_task_loader(split, mean, std, replace(cfg, backend=name))


def _step_ms(model_name: str, batch: Any, device: torch.device, warmup: int, runs: int) -> float:
    """Median ms of one forward + backward + optimizer step on ``batch`` (bf16 autocast)."""
    from fsmtl.benchmarks.common import median, time_runs
    from fsmtl.models import build_model

    x = batch.images
    model = build_model(model_name, in_channels=x.shape[1], image_size=x.shape[-1]).to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(x).float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # untimed first call (cuDNN autotune), whatever --warmup says
    return 1e3 * median(time_runs(step, device, warmup, runs))


def open_shards_size(root: Path) -> int:
    from fsmtl.preprocess.shard_reader import open_shards

    return int(open_shards(root).image_shape[0])


def measure(name: str, root: Path, cfg: Any, args: argparse.Namespace, loader: Any = None) -> dict[str, Any]:
    """One row: the back end ``name`` on ``root``'s train split (through ``loader`` if given; closed after)."""
    from fsmtl.benchmarks.common import median, time_windows
    from fsmtl.preprocess.shard_reader import open_shards

    shards = open_shards(root)
    if loader is None:
        loader = _loader(name, shards.split("train"), shards.mean, shards.std, cfg)
    # whole batch groups per window (the CUDA path makes several batches per launch): a window
    # that held more groups than another would be charged for batches it did not hand out
    group = int(getattr(loader.backend, "group", 1))
    k = -(-args.batches // group) * group
    try:
        next(loader)  # untimed first batch, whatever --warmup says: numba's JIT, worker/FFCV start-up
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


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """PASS/FAIL of the CPU torch row against TARGETS, at TARGET_SIZE only (the size they are set for)."""
    lines = []
    for r in rows:
        if r["size"] != TARGET_SIZE or r["backend"] != "torch" or r["device"] != "cpu":
            continue
        for ref, target in TARGETS.items():
            got = r.get(f"x_vs_{ref}")
            if got is not None:
                lines.append(f"{r['size']}px: torch is {got:.1f}x {ref} (target >= {target:.0f}x): {'PASS' if got >= target else 'FAIL'}")
    return lines


def _parser() -> argparse.ArgumentParser:
    from fsmtl.benchmarks.common import device_name, image_sizes, nonnegative_int, positive_int

    p = CliParser(prog="fsmtl bench pipeline", description=plain_doc(__doc__))
    p.add_argument("--data", nargs="+", type=Path, help="shard directories (default: synthetic 84 and 32 px)")
    p.add_argument("--sizes", type=image_sizes, default=None, help="image sides of the synthetic shards (default 84,32; not with --data)")
    p.add_argument("--backends", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    p.add_argument("--tasks", type=positive_int, default=6, help="tasks per batch (meta_batch_size)")
    p.add_argument("--ways", type=positive_int, default=5, help="classes per task (default 5)")
    p.add_argument("--shots", type=positive_int, default=5, help="support images per class (default 5)")
    p.add_argument("--queries", type=nonnegative_int, default=5, help="query images per class (default 5)")
    p.add_argument("--workers", type=positive_int, default=None, help="reference/dali/ffcv workers (default: cores)")
    p.add_argument("--batches", type=positive_int, default=4, help="batches per timed run")
    p.add_argument("--warmup", type=nonnegative_int, default=2, help="untimed calls after the untimed first batch (default 2)")
    p.add_argument("--runs", type=positive_int, default=5, help="timed runs, median taken (default 5)")
    p.add_argument("--device", type=device_name, default="auto", help="also run the torch back end here: cuda[:N], cpu (none) or auto (default: cuda if available)")
    p.add_argument("--step-model", default="resnet12", help="on CUDA, time a training step of this model ('' = off)")
    p.add_argument("--json", type=Path, default=None, help="write the results here (default: not written)")
    return p


def main(argv: list[str]) -> int:
    from fsmtl.benchmarks.limits import check_batch_fits, check_flags
    from fsmtl.benchmarks.common import check_writable, format_table, hardware_info, parse_names, write_results
    from fsmtl.pipelines.config import PipelineConfig
    args = _parser().parse_args(argv)
    check_flags(args, {"--tasks": 1, "--ways": 1, "--shots": 1, "--queries": 0, "--workers": 1, "--batches": 1,
                       "--warmup": 0, "--runs": 1}, sides=("--sizes",))
    check_batch_fits("--tasks/--ways/--shots/--queries/--sizes", args.tasks * args.ways * (args.shots + args.queries),
                     max(args.sizes or (84,)), args.device)
    names = parse_names("--backends", args.backends, ALL)
    if args.data and args.sizes is not None:
        raise FsmtlError("--sizes: sets the synthetic shards' sizes; with --data the sizes are the data's (leave --sizes out)")
    check_writable(args.json)
    cfg = PipelineConfig(ways=args.ways, shots=args.shots, queries=args.queries, tasks_per_batch=args.tasks, workers=args.workers)
    cfg = replace(cfg, workers=cpu_workers(cfg.workers))
    gpu = ("cuda" if torch.cuda.is_available() else None) if args.device == "auto" else args.device
    with tempfile.TemporaryDirectory(prefix="fsmtl-bench-pipeline-") as tmp:
        data = [Path(d) for d in args.data or []]
        roots = data or synthetic_roots(Path(tmp), args.sizes or (84, 32), exports=tuple(n for n in ("ffcv", "dali") if n in names))
        jobs = [(root, name, cfg) for root in roots for name in names]
        if gpu and gpu != "cpu":
            jobs += [(root, name, replace(cfg, device=gpu)) for root in roots for name in ("torch", "torch-ops") if name in names]
        check_jobs(jobs, "--data" if data else "")  # every directory and request, before any work
        sizes = [open_shards_size(root) for root in roots]
        loaders = open_ffcv_loaders(jobs)
        try:
            rows = measure_all(jobs, args, loaders)
        finally:
            for loader in loaders.values():  # those a failure left unmeasured
                if not isinstance(loader, Exception):
                    loader.close()
    add_speedups(rows)
    print(format_table(rows, [c for c in _COLUMNS if any(c in r for r in rows)]))
    hw = hardware_info(gpu or "cpu")
    print(f"# {hw['cpu']} ({hw['cpu_count']} cores, {hw['torch_threads']} torch threads){', ' + hw['gpu'] if 'gpu' in hw else ''}")
    lines = verdicts(rows)
    if lines:
        print("\n".join(lines))
    elif any(k.startswith("x_vs_") for r in rows for k in r):
        print(f"(no PASS/FAIL: the speed-up targets are set at {TARGET_SIZE}x{TARGET_SIZE}, for the CPU torch row)")
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    shapes = " and ".join(f"{s}x{s}x3" for s in sizes)
    config["sizes"] = sizes
    config["data"] = ([f"{d} ({s}x{s})" for d, s in zip(data, sizes)] if data
                      else f"synthetic ({shapes}, 16 train classes x 60)")  # fmt: skip
    write_results(args.json, "pipeline", config, rows, gpu or "cpu", targets=TARGETS, target_size=TARGET_SIZE,
                  verdicts=lines, packages=_versions())  # fmt: skip
    if args.json:
        print(f"wrote {args.json}")
    return 0


def measure_all(jobs: list[tuple[Path, str, Any]], args: argparse.Namespace, loaders: dict[int, Any]) -> list[dict[str, Any]]:
    """One row per job, in job order; a back end that breaks gets an error row, the others still run.
    ``loaders``: loaders made beforehand (see :func:`open_ffcv_loaders`), taken out as used."""
    # the back ends that fork DataLoader workers go first: forking after numba's TBB threads have
    # started (the torch back end's CPU kernel) is unsafe for the children, and numba warns of it
    order = sorted(range(len(jobs)), key=lambda i: jobs[i][1] != "reference")
    done: dict[int, dict[str, Any]] = {}
    for i in order:
        root, name, jcfg = jobs[i]
        try:
            pre = loaders.pop(i, None)
            if isinstance(pre, Exception):
                raise pre
            r = done[i] = measure(name, root, jcfg, args, pre)
        except FsmtlError:
            raise  # a bad request (a back end not installed, ...): the user's to fix
        except Exception as e:  # noqa: BLE001 - one broken back end must not lose the other rows
            size = open_shards_size(root)
            done[i] = {"size": size, "backend": name, "device": jcfg.device, "images_per_s": None,
                       "error": f"{type(e).__name__}: {str(e).strip()[:200]}"}  # fmt: skip
            print(f"{size}px {name} ({jcfg.device}): FAILED {done[i]['error']}", flush=True)
            continue
        print(f"{r['size']}px {name} ({r['device']}): {r['images_per_s']:,.0f} images/s, {r['ms_per_batch']:.2f} ms/batch", flush=True)
    return [done[i] for i in range(len(jobs))]


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
