"""The fused numba Lee19 kernel against the torch path, across every op order, flip and crop."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch

from fsmtl.pipelines.augment import augment_rows, draw_lee_params
from fsmtl.pipelines.numba_aug import augment_rows_numba


@pytest.mark.parametrize("channels,size,pad", [(3, 84, 8), (3, 20, 4), (1, 28, 4)])
def test_numba_kernel_equals_torch_for_every_order_and_extreme_factors(channels: int, size: int, pad: int) -> None:
    gen = torch.Generator().manual_seed(7)
    data = torch.randint(0, 256, (12, size, size, channels), dtype=torch.uint8, generator=gen)
    orders = torch.tensor(list(itertools.permutations(range(3))))  # all six orders ...
    n = 4 * len(orders)
    params = draw_lee_params(n, gen, pad)
    factors = params.factors.clone()  # type: ignore[union-attr]
    factors[: n // 2] = torch.tensor([0.6, 1.4, 1.4])  # ... with clamping-heavy extremes
    params = params._replace(order=orders.repeat(4, 1), factors=factors, flip=torch.arange(n) % 2 == 0)
    rows = torch.randint(0, 12, (n,), generator=gen)
    mean, std = [0.45] * channels, [0.27] * channels
    ours = augment_rows_numba(data.numpy(), rows, params, mean, std)
    ref = augment_rows(data, rows, params, mean, std)
    assert (ours - ref).abs().max().item() < 1e-4


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_a_process_on_one_core_exits_after_the_kernel_ran_on_a_loader_thread() -> None:
    """numba's TBB layer hung the process at exit (unload_tbb, numba#10556) when it saw one core and
    the kernel had run on a non-main thread, as fsmtl's loader runs it: `fsmtl bench race --jobs 2`
    trainings never ended. On one core fsmtl now prefers another threading layer."""
    code = ("import threading; import numba\n"
            "from fsmtl.pipelines.numba_aug import warm_up\n"
            "t = threading.Thread(target=warm_up); t.start(); t.join()\n"
            "print('layer', numba.threading_layer())\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "layer" in proc.stdout and "tbb" not in proc.stdout, proc.stdout
