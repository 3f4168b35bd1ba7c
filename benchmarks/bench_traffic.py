"""``fsmtl bench traffic``: what the torch back end's device (CUDA) path asks of a GPU, counted
op by op on the CPU: operations per batch and bytes of memory touched per image.

A GPU cannot be timed here, but its two limits can be counted: launches (each op is at least one
kernel launch, a few microseconds of host time) and memory traffic (each op reads its inputs and
writes its output; an elementwise pass over an 84x84x3 float32 batch is 85 KB per image). The
device path runs on the CPU (its tested twin, ``cpu_kernel="device"``) under a dispatch hook that
records every aten operation with the bytes of its tensor inputs and outputs (the resident split
itself excluded: a gather reads only its rows). Rows: the torch ops (``device_kernel="torch"``),
one batch per launch and in groups of ``group_images``. For comparison, the fused Triton kernel
(the CUDA default) is one launch plus two uploads per group and, by construction, reads each
image's uint8 source twice and writes its output once: ``kernel_bytes_per_image`` (bf16 output).
Host-side planning (episode sampling, parameter draws: CPU tensors) is counted separately.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fsmtl.benchmarks.common import check_writable, format_table, image_sizes, positive_int, write_results
from fsmtl.core.cli import CliParser, plain_doc
class OpCounter(TorchDispatchMode):
    """Counts aten ops and the bytes of their tensor arguments and results (``skip``: a storage to ignore)."""

    def __init__(self, skip: torch.Tensor | None = None, big: int = 1 << 20) -> None:
        super().__init__()
        self.skip = None if skip is None else skip.untyped_storage().data_ptr()
        self.big, self.ops, self.big_ops, self.bytes = big, 0, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
        nbytes = sum(t.numel() * t.element_size() for t in tensors if t.untyped_storage().data_ptr() != self.skip)
        self.ops += 1
        self.bytes += nbytes
        self.big_ops += nbytes >= self.big
        return out


def count(size: int, tasks: int, group_images: int, batches: int) -> dict[str, Any]:
    """One row: the device path's torch ops on ``size`` px synthetic data, ``batches`` launches counted."""
    from fsmtl.pipelines.backend_torch import TorchBackend
    from fsmtl.pipelines.config import PipelineConfig
    from fsmtl.pipelines.planning import plan_batch
    from fsmtl.preprocess.shards import SplitData

    n_cls, per = 16, 20
    images = np.random.default_rng(0).integers(0, 256, (n_cls * per, size, size, 3), dtype=np.uint8)
    split = SplitData("train", images, np.repeat(np.arange(n_cls), per), np.arange(0, n_cls * per + 1, per), [str(i) for i in range(n_cls)])
    cfg = PipelineConfig(tasks_per_batch=tasks, out_dtype=torch.bfloat16, device_kernel="torch", group_images=group_images)
    pad = 8 if size >= 64 else 4
    backend = TorchBackend(split, [0.5] * 3, [0.25] * 3, cfg, pad, cpu_kernel="device")
    g = torch.Generator().manual_seed(0)
    plans = [plan_batch(backend.offsets, cfg, pad, g) for _ in range(batches * backend.group)]
    with OpCounter() as planning:
        plan_batch(backend.offsets, cfg, pad, g)
    with OpCounter(skip=backend.data) as c:
        for i in range(batches):
            backend.make_device_group(plans[i * backend.group : (i + 1) * backend.group])
    n_batches = batches * backend.group
    n_images = n_batches * cfg.batch_images
    row = {"size": size, "kernel": backend.kernel, "batches_per_launch": backend.group,
           "device_ops_per_batch": c.ops / n_batches, "full_size_ops_per_batch": c.big_ops / n_batches,
           "aten_mb_per_image": c.bytes / n_images / 1e6, "planning_ops_per_batch": planning.ops}  # fmt: skip
    row["kernel_bytes_per_image"] = size * size * 3 * (2 + 2)  # the Triton kernel: uint8 read twice, bf16 written once
    return row


def main(argv: list[str] | None = None) -> int:
    from fsmtl.benchmarks.limits import check_batch_fits, check_flags

    p = CliParser(prog="fsmtl bench traffic", description=plain_doc(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--sizes", type=image_sizes, default=(84, 32), help="comma-separated image sides >= 8 (default 84,32)")
    p.add_argument("--tasks", type=positive_int, default=6, help="tasks per batch (5 ways x 10 images each)")
    p.add_argument("--batches", type=positive_int, default=2, help="launches counted per row")
    p.add_argument("--json", type=Path, default=None, help="write the results here (default: not written)")
    a = p.parse_args(argv)
    check_flags(a, {"--tasks": 1, "--batches": 1}, sides=("--sizes",))
    check_batch_fits("--tasks/--sizes", a.tasks * 50, max(a.sizes), "cpu")  # 5 ways x 10 images a task
    check_writable(a.json)
    rows = [count(size, a.tasks, group, a.batches) for size in a.sizes for group in (1, 2048)]
    cols = ["size", "kernel", "batches_per_launch", "device_ops_per_batch", "full_size_ops_per_batch",
            "aten_mb_per_image", "kernel_bytes_per_image", "planning_ops_per_batch"]  # fmt: skip
    print(format_table(rows, [c for c in cols if any(c in r for r in rows)]))
    write_results(a.json, "traffic", vars(a) | {"json": str(a.json), "sizes": list(a.sizes)}, rows, "cpu")
    if a.json:
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    import sys

    from fsmtl.core.cli import run_stage_main
    sys.exit(run_stage_main(main, sys.argv[1:]))
