"""``fsmtl doctor``: what this machine gives fsmtl -- devices, precisions, and which optional parts work.

Each optional component is really imported (not only looked up), so a package that is installed
but broken (a missing system library, a numpy it was not built for) shows as broken, with the first
line of its error and how to fix it. Exit code 0 when everything fsmtl needs works (optional parts
may be missing), 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from fsmtl.core.cli import CliParser, plain_doc
from fsmtl.core.optional import import_optional
@dataclass(frozen=True)
class Component:
    """One thing fsmtl can use: the module to import, its distribution name, what it enables."""

    module: str
    dist: str
    enables: str
    fix: str
    required: bool = False


COMPONENTS: tuple[Component, ...] = (
    Component("torch", "torch", "everything", "pip install torch", required=True),
    Component("numpy", "numpy", "everything", "pip install numpy", required=True),
    Component("tqdm", "tqdm", "progress bars", "pip install tqdm", required=True),
    Component("numba", "numba", "the fused CPU augmentation kernel (else slower torch CPU ops)", "pip install numba"),
    Component("triton", "triton", "the fused CUDA augmentation kernel (else slower torch ops on the GPU)", "pip install triton (comes with torch's CUDA wheels on Linux)"),
    Component("PIL", "pillow", "image decoding in convert; the reference pipeline", "pip install pillow"),
    Component("torchvision", "torchvision", "the reference (seed) pipeline back end", "pip install torchvision"),
    Component("sklearn", "scikit-learn", "bench eval's scikit-learn baseline", "pip install scikit-learn"),
    Component("matplotlib", "matplotlib", "plots (fsmtl plot, demo report, benchmarks)", "pip install matplotlib"),
    Component("wandb", "wandb", "--wandb offline|online", "pip install wandb (or --wandb disabled)"),
    Component("torch_optimizer", "torch-optimizer", "--optimizer sgdp|sgdw|adabound|adamp", "pip install torch-optimizer"),
    Component("nvidia.dali", "nvidia-dali-cuda130", "--pipeline dali, --format dali", "pip install -e '.[dali]'"),
    Component("ffcv", "ffcv", "--pipeline ffcv, --format ffcv",
              "apt-get install -y pkg-config libopencv-dev libturbojpeg0-dev, then pip install -e '.[ffcv]'"),
    Component("learn2learn", "learn2learn", "--algorithm anil|maml; the seed's task builder in the reference pipeline",
              "make l2l"),
)  # fmt: skip


def check_component(c: Component) -> dict[str, Any]:
    """Import ``c.module`` (its stdout/stderr chatter swallowed): status ok, missing or broken."""
    try:
        ver: str | None = version(c.dist)
    except PackageNotFoundError:
        ver = None
    try:
        import_optional(c.module)
        status, detail = "ok", ""
    except ImportError as e:
        native = e.__cause__ is not None and not isinstance(e.__cause__, ImportError)  # a library that fails to load
        status = "missing" if ver is None and not native else "broken"
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return {**asdict(c), "version": ver, "status": status, "detail": detail}


def devices() -> dict[str, Any]:
    """CPU and CUDA facts that decide fsmtl's defaults (device, precision, workers)."""
    import torch

    from fsmtl.benchmarks.common import cpu_model
    from fsmtl.core.device import cpu_bf16_supported

    out: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_model(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "torch_cuda_build": torch.version.cuda, "cpu_bf16": cpu_bf16_supported(),
        "cuda_available": torch.cuda.is_available(), "gpus": [],
    }  # fmt: skip
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out["gpus"].append({"index": i, "name": p.name, "memory_gb": round(p.total_memory / 1e9, 1),
                                "capability": f"{p.major}.{p.minor}", "bf16": p.major >= 8})  # bf16 from Ampere (8.0) on  # fmt: skip
    return out


def defaults_here(dev: dict[str, Any]) -> str:
    """What ``fsmtl train`` picks on this machine with --device auto --precision auto."""
    if dev["gpus"]:
        g = dev["gpus"][0]
        return f"cuda:0 ({g['name']}), {'bf16' if g['bf16'] else 'fp32'} autocast, the split resident on the GPU"
    return "cpu, " + ("bf16 autocast" if dev["cpu_bf16"] else "fp32 (no native bf16 on this CPU)")


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="fsmtl doctor", description=plain_doc(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="also write the findings here")
    p.add_argument("--warm", action="store_true", help="also compile the CPU kernels into numba's on-disk cache (once "
                   "after an install, about 30 s on 2 cores), so that no training run's first epoch waits on it")
    a = p.parse_args(argv)
    dev = devices()
    print(f"python {dev['python']} on {dev['platform']}")
    print(f"cpu    {dev['cpu']}, {dev['cpu_count']} cores, torch threads {dev['torch_threads']}, native bf16: {dev['cpu_bf16']}")
    cuda = f"CUDA {dev['torch_cuda_build']} build" if dev["torch_cuda_build"] else "CPU-only build"
    print(f"torch  {dev['torch']} ({cuda}); CUDA available: {dev['cuda_available']}")
    for g in dev["gpus"]:
        print(f"gpu {g['index']}  {g['name']}, {g['memory_gb']} GB, compute {g['capability']}, bf16: {g['bf16']}")
    print(f"fsmtl train here: {defaults_here(dev)}\n")
    rows = [check_component(c) for c in COMPONENTS]
    width = max(len(r["module"]) for r in rows)
    for r in rows:
        ver = r["version"] or "-"
        line = f"{r['module']:<{width}}  {r['status']:<7}  {ver:<12}  {r['enables']}"
        if r["status"] != "ok":
            line += f"\n{'':<{width}}  {'':<7}  {'':<12}  {r['detail'][:100]}\n{'':<{width}}  {'':<7}  {'':<12}  fix: {r['fix']}"
        print(line)
    bad = [r["module"] for r in rows if r["required"] and r["status"] != "ok"]
    if a.warm and next(r for r in rows if r["module"] == "numba")["status"] == "ok":
        from fsmtl.pipelines.numba_aug import warm_up

        print(f"\nCPU kernels compiled or loaded from numba's cache in {warm_up():.1f} s")
    if a.json:
        from fsmtl.core.fileio import atomic_write_json

        atomic_write_json(a.json, {"devices": dev, "components": rows})
    if bad:
        print(f"\nfsmtl cannot run: {', '.join(bad)} not working", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
