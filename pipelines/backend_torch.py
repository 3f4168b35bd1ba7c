"""The default back end: the split resident on the device, batches made by a few tensor ops.

On CUDA the whole uint8 split is copied to the GPU once and each batch is one fused gather (rows,
crop, flip) plus the jitter blends and the normalisation, on a side stream. If the split exceeds
``cfg.memory_budget_gb`` it stays in host memory: the batch's rows are gathered on the host into
pinned staging memory and copied asynchronously. On the CPU the split is read into RAM
(or left memory-mapped beyond the budget) and the fused numba kernel makes the batch: measured
~15-40x faster than the torch CPU ops on the 2-core development machine (``fsmtl bench pipeline``,
rows ``torch`` vs ``torch-ops``), so it is the CPU path when numba imports.
``cpu_kernel="torch"`` forces the torch CPU ops (tests, benchmarks), and ``cpu_kernel="device"``
runs the CUDA code path (resident, or pinned staging) on the CPU, as its tested twin.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from pipelines.augment import augment_rows
from pipelines.loader import BatchPlan, PipelineConfig, TaskBatch, plan_batch
from pipelines.transforms import normalize_batch
from preprocess.shards import SplitData

log = logging.getLogger(__name__)


def _numba_available() -> bool:
    try:
        import pipelines.numba_aug  # noqa: F401
    except Exception:  # noqa: BLE001 - numba missing or broken: fall back to torch ops
        return False
    return True


def _load(images: np.ndarray, device: torch.device | None, chunk: int = 4096) -> Tensor:
    """Copy a (memory-mapped) uint8 split to ``device`` in chunks; ``None`` -> host memory.

    Not pinned: each batch's rows are gathered into a pinned staging buffer and copied from there
    asynchronously, and pinning the whole split would cost up to twice its size (the pinned
    allocator rounds up to a power of two: 16 GiB for tiered-ImageNet's 9.5 GB, per rank)."""
    out = torch.empty(images.shape, dtype=torch.uint8, device=device or "cpu")
    for i in range(0, len(images), chunk):
        out[i : i + chunk].copy_(torch.from_numpy(np.array(images[i : i + chunk])))
    return out


class BufferPool:
    """Reusable float32 output buffers for the CPU kernel.

    Why: a fresh 25 MB batch costs the kernel's page faults and zeroing, about a third of the
    kernel's time at 84x84 on the development machine. A buffer is reused only once nothing
    else refers to it: every tensor or view handed out holds a reference to its numpy array
    (``torch.from_numpy``), so ``sys.getrefcount`` counts the consumer's live batches.
    """

    _OWN_REFS = 3  # the list, the loop variable and getrefcount's argument

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.bufs: list[np.ndarray] = []

    def get(self, shape: tuple[int, ...]) -> Tensor:
        for a in self.bufs:
            if a.shape == shape and sys.getrefcount(a) <= self._OWN_REFS:
                return torch.from_numpy(a)
        a = np.empty(shape, dtype=np.float32)
        if len(self.bufs) < self.size:
            self.bufs.append(a)
        return torch.from_numpy(a)


class TorchBackend:
    """Makes batches from a resident split with torch ops (CUDA) or the numba kernel (CPU)."""

    def __init__(
        self,
        split: SplitData,
        mean: list[float],
        std: list[float],
        cfg: PipelineConfig,
        pad: int,
        cpu_kernel: str = "auto",
    ) -> None:
        self.cfg, self.mean, self.std, self.pad = cfg, mean, std, pad
        self.device = torch.device(cfg.device)
        self.offsets = torch.from_numpy(np.asarray(split.class_offsets, dtype=np.int64))
        nbytes = int(split.images.nbytes)
        budget = None if cfg.memory_budget_gb is None else cfg.memory_budget_gb * 1e9
        self.resident = budget is None or nbytes <= budget
        # the device path: CUDA, or its CPU twin for tests (cpu_kernel="device")
        self.device_path = self.device.type != "cpu" or cpu_kernel == "device"
        self.side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        if self.device_path:
            if not self.resident:
                log.info("split %s (%.2f GB) exceeds the memory budget: host memory + pinned staging", split.name, nbytes / 1e9)
            self.data = _load(split.images, self.device if self.resident else None)
            if self.side is not None:  # the side stream must see the split's upload finished
                self.side.wait_stream(torch.cuda.current_stream(self.device))
        else:
            # CPU: "resident" means read into RAM; beyond the budget, keep reading the memmap
            self.np_data = _load(split.images, torch.device("cpu")).numpy() if self.resident else np.asarray(split.images)
            self.data = torch.from_numpy(self.np_data) if self.resident else None
        self.use_numba = not self.device_path and cpu_kernel != "torch" and _numba_available()
        self.pool = BufferPool()

    def stream(self, generator: torch.Generator) -> Iterator[tuple[TaskBatch, Tensor, Any]]:
        while True:
            plan = plan_batch(self.offsets, self.cfg, self.pad, generator)
            state = generator.get_state()
            if self.side is not None:
                with torch.cuda.stream(self.side):
                    batch = self.make_device(plan)
                    event = torch.cuda.Event()
                    event.record(self.side)
                yield batch, state, event
            elif self.device_path:
                yield self.make_device(plan), state, None
            else:
                yield self.make_cpu(plan), state, None

    def _finish(self, x: Tensor) -> Tensor:
        if not self.cfg.channels_last:
            x = x.contiguous()
        return x.to(self.cfg.out_dtype)

    def make_cpu(self, plan: BatchPlan) -> TaskBatch:
        """Realise a plan on the CPU."""
        if plan.params is None:
            imgs = torch.from_numpy(self.np_data[plan.rows.numpy()])
            x = normalize_batch(imgs, self.mean, self.std, self.cfg.out_dtype, self.cfg.channels_last)
        elif self.use_numba:
            from pipelines.numba_aug import augment_rows_numba

            out = self.pool.get((plan.rows.numel(), *self.np_data.shape[1:]))
            x = self._finish(augment_rows_numba(self.np_data, plan.rows, plan.params, self.mean, self.std, out=out))
        else:
            data = self.data if self.data is not None else torch.from_numpy(self.np_data[plan.rows.numpy()])
            rows = plan.rows if self.data is not None else torch.arange(plan.rows.numel())
            x = augment_rows(data, rows, plan.params, self.mean, self.std, self.cfg.out_dtype, self.cfg.channels_last)
        return TaskBatch(x, plan.task, plan.label, plan.global_class)

    def make_device(self, plan: BatchPlan) -> TaskBatch:
        """Realise a plan with torch ops on ``cfg.device`` (on CUDA, call under the side stream)."""
        dev = self.device
        if self.resident:
            data, rows = self.data, plan.rows.to(dev, non_blocking=True)
        else:
            pin = self.device.type == "cuda"
            staged = torch.empty((plan.rows.numel(), *self.data.shape[1:]), dtype=torch.uint8, pin_memory=pin)
            torch.index_select(self.data, 0, plan.rows, out=staged)
            data = staged.to(dev, non_blocking=True)
            rows = torch.arange(plan.rows.numel(), device=dev)
        if plan.params is None:
            x = normalize_batch(data[rows], self.mean, self.std, self.cfg.out_dtype, self.cfg.channels_last)
        else:
            x = augment_rows(data, rows, plan.params.to(dev), self.mean, self.std, self.cfg.out_dtype, self.cfg.channels_last)
        return TaskBatch(x, plan.task.to(dev), plan.label.to(dev), plan.global_class.to(dev))

    @staticmethod
    def batch_augmenter(mean: list[float], std: list[float], cfg: PipelineConfig) -> Callable[[Tensor, BatchPlan], TaskBatch]:
        """For loaders that fetch the planned rows themselves (FFCV): a function
        ``(images uint8 [B, H, W, C] in plan order, plan) -> TaskBatch`` on ``cfg.device``."""
        device = torch.device(cfg.device)
        use_numba = device.type == "cpu" and _numba_available()

        def augment(images: Tensor, plan: BatchPlan) -> TaskBatch:
            rows = torch.arange(images.shape[0])
            if plan.params is None:
                x = normalize_batch(images.to(device, non_blocking=True), mean, std, cfg.out_dtype, cfg.channels_last)
            elif use_numba:
                from pipelines.numba_aug import augment_rows_numba

                x = augment_rows_numba(np.ascontiguousarray(images.numpy()), rows, plan.params, mean, std)
                x = (x if cfg.channels_last else x.contiguous()).to(cfg.out_dtype)
            else:
                imgs = images.to(device, non_blocking=True)
                x = augment_rows(imgs, rows.to(device), plan.params.to(device), mean, std, cfg.out_dtype, cfg.channels_last)
            return TaskBatch(x, plan.task.to(device), plan.label.to(device), plan.global_class.to(device))

        return augment

    def close(self) -> None:
        self.data = None
        self.np_data = None
