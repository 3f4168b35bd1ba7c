"""``python -m fsmtl.benchmarks.gpu_probe``: the host-side cost of the CUDA pipeline path, as probed on
the H200 on 2026-12-04 (``benchmarks/results/gpu_pipeline_probe_h200.json``).

Two figures, one run: ``plan_batch``'s time a 300-image batch (6 tasks x 5 ways x 10 images) at 60
and 600 images a class (mean of ``--calls`` calls after 50 warm-up calls, one thread), and the torch
loader's images/s on 84x84 synthetic shards with batch groups of 2048 and 8192 images, with and
without the prefetch thread (``--batches`` batches after as many warm-up batches, synchronised).
Prints the JSON; ``--json`` writes it too.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fsmtl.benchmarks.common import device_name, positive_int, synchronize, write_json
from fsmtl.core.cli import CliParser, plain_doc
def planning_us(per_class: int, calls: int) -> float:
    """Mean microseconds of one ``plan_batch`` call for a 300-image batch over 64 classes."""
    from fsmtl.pipelines.config import PipelineConfig
    from fsmtl.pipelines.planning import plan_batch
    cfg = PipelineConfig(tasks_per_batch=6, device="cpu")
    offsets = torch.arange(0, 64 * per_class + 1, per_class)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        plan_batch(offsets, cfg, 8, g)
    t0 = time.perf_counter()
    for _ in range(calls):
        plan_batch(offsets, cfg, 8, g)
    return (time.perf_counter() - t0) * 1e6 / calls


def loader_images_per_s(device: torch.device, group_images: int, prefetch: bool, batches: int, tmp: Path) -> float:
    """The torch loader's images/s on 84x84 synthetic shards (64 classes x 60 images)."""
    from fsmtl.pipelines.config import PipelineConfig
    from fsmtl.pipelines.loader import build_task_loader
    from fsmtl.preprocess.shard_reader import open_shards
    from fsmtl.preprocess.synthetic import SyntheticConfig, write_synthetic_shards

    root = tmp / "s84"
    if not root.exists():
        write_synthetic_shards(root, SyntheticConfig(image_size=84, classes=(64, 5, 5), per_class=60))
    shards = open_shards(root)
    cfg = PipelineConfig(tasks_per_batch=6, device=str(device), group_images=group_images, prefetch=prefetch,
                         out_dtype=torch.bfloat16)  # fmt: skip
    with build_task_loader(shards.split("train"), shards.mean, shards.std, cfg) as loader:
        for _ in range(batches):
            next(loader)
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(loader)
        synchronize(device)
        return cfg.batch_images * batches / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = CliParser(prog="python -m fsmtl.benchmarks.gpu_probe", description=plain_doc(__doc__),
                  formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--device", type=device_name, default="auto", help="auto (default: cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--calls", type=positive_int, default=1000, help="plan_batch calls timed")
    p.add_argument("--batches", type=positive_int, default=120, help="loader batches timed (and as many warm-up)")
    p.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    a = p.parse_args(argv)
    from fsmtl.core.device import CLI_ARGS, resolve_device

    device = resolve_device(a.device, CLI_ARGS)
    res: dict[str, Any] = {f"plan_batch_us_{n}_per_class": planning_us(n, a.calls) for n in (60, 600)}
    with tempfile.TemporaryDirectory(prefix="fsmtl-gpu-probe-") as tmp:
        for group in (2048, 8192):
            for prefetch in (True, False):
                key = f"loader_group{group}_prefetch{int(prefetch)}_images_per_s"
                res[key] = loader_images_per_s(device, group, prefetch, a.batches, Path(tmp))
    print(json.dumps(res, indent=1))
    if a.json:
        write_json(a.json, res)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
