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

from fsmtl.core.errors import FsmtlError
from fsmtl.core.optional import optional_problem
from fsmtl.pipelines.augment import LeeParams, augment_rows, draw_lee_params, warp_batch
from fsmtl.pipelines.checks import check_pad
from fsmtl.pipelines.config import PipelineConfig, check_request
from fsmtl.pipelines.planning import plan_batch, task_groups
from fsmtl.pipelines.types import BatchPlan, TaskBatch
from fsmtl.pipelines.transforms import normalize_batch
from fsmtl.preprocess.shards import SplitData

log = logging.getLogger(__name__)


def _numba_available() -> bool:
    """Whether the fused numba kernel imports (else the torch ops serve on the CPU)."""
    return optional_problem("fsmtl.pipelines.numba_aug") is None


def _triton_error() -> str | None:
    """None when the fused Triton kernel imports, else why not (the torch ops serve instead)."""
    return optional_problem("fsmtl.pipelines.triton_aug")


def choose_device_kernel(want: str, on_cuda: bool, problem: Callable[[], str | None]) -> str:
    """The device path's kernel, "triton" or "torch ops", for ``PipelineConfig.device_kernel`` ``want``.

    "auto" takes Triton on CUDA when ``problem()`` (import, then a self-check against the torch
    ops) finds none, else warns and takes the torch ops; on the CPU twin the torch ops (Triton
    runs there only when asked, under ``TRITON_INTERPRET=1``). "triton" raises if it has a problem.
    """
    if want == "torch" or (want == "auto" and not on_cuda):
        return "torch ops"
    why = problem()
    if why is None:
        return "triton"
    if want == "triton":
        raise FsmtlError(f"pipeline device_kernel 'triton': unusable here ({why}); use 'torch' or 'auto'")
    log.warning("pipeline: the fused Triton kernel is unusable here (%s); using torch ops (slower)", why)
    return "torch ops"


def cat_plans(plans: list[BatchPlan]) -> BatchPlan:
    """Several batches' plans as one (rows, labels and parameters concatenated in order)."""
    if len(plans) == 1:
        return plans[0]
    ps = [p.params for p in plans]
    params = None
    if ps[0] is not None:
        cols = [None if ps[0][i] is None else torch.cat([q[i] for q in ps]) for i in range(5)]  # type: ignore[index]
        params = LeeParams(*cols, ps[0].pad)  # type: ignore[arg-type]
    fields = [torch.cat([getattr(p, f) for p in plans]) for f in ("rows", "task", "label", "global_class")]
    warp = None if plans[0].warp is None else torch.cat([p.warp for p in plans])  # type: ignore[misc]
    elastic = None if plans[0].elastic is None else torch.cat([p.elastic for p in plans])  # type: ignore[misc]
    return BatchPlan(*fields, params, warp, elastic)


def _upload(t: Tensor, device: torch.device) -> Tensor:
    """A small CPU tensor on ``device``; to CUDA through pinned memory, so the copy is asynchronous
    (a copy from pageable memory would make the host wait for the stream)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


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
    """Makes batches from a resident split: the fused Triton kernel or torch ops on CUDA, the
    numba kernel (or torch ops) on the CPU.

    On the device path ``cfg.group_images`` images (whole batches) are planned, uploaded and
    augmented by one set of launches, then handed out batch by batch: the per-launch host costs
    (planning aside) are paid once per group.
    """

    def __init__(
        self,
        split: SplitData,
        mean: list[float],
        std: list[float],
        cfg: PipelineConfig,
        pad: int,
        cpu_kernel: str = "auto",
    ) -> None:
        # every batch is made unchecked (check=False): the split, mean/std, config and pad are
        # checked here, once, so each plan drawn from them is valid by construction
        check_request(split, mean, std, cfg)
        check_pad(pad, split.images.shape[1], split.images.shape[2], "TorchBackend")
        if cpu_kernel not in ("auto", "torch", "device"):
            raise FsmtlError(f"TorchBackend cpu_kernel: expected 'auto', 'torch' or 'device', got {cpu_kernel!r}")
        self.cfg, self.mean, self.std, self.pad = cfg, mean, std, pad
        self.device = torch.device(cfg.device)
        self.offsets = torch.from_numpy(np.asarray(split.class_offsets, dtype=np.int64))
        self.groups = task_groups(split, cfg)
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
        self.group = max(1, cfg.group_images // cfg.batch_images) if self.device_path else 1
        self.chunk = self.group  # TaskLoader's prefetch hands over a whole group at a time
        self.kernel = self._pick_kernel(cpu_kernel) if self.device_path else ("numba" if self.use_numba else "torch ops")
        log.info("pipeline torch back end on %s: %s kernel, %d batch(es) per launch", self.device, self.kernel, self.group)

    def _pick_kernel(self, cpu_kernel: str) -> str:
        want = "torch" if cpu_kernel == "torch" or self.cfg.augment != "lee" else self.cfg.device_kernel
        return choose_device_kernel(want, self.device.type == "cuda", self._triton_problem)

    def _triton_problem(self) -> str | None:
        return _triton_error() or self._triton_self_check()

    def _triton_self_check(self) -> str | None:
        """Run the Triton kernel on a few rows of the split against the torch ops; None if equal."""
        from fsmtl.pipelines.triton_aug import augment_rows_triton

        n = min(16, int(self.offsets[-1]))
        g = torch.Generator().manual_seed(12345)  # its own generator: the loader's stays untouched
        rows = torch.randint(0, int(self.offsets[-1]), (n,), generator=g)
        params = draw_lee_params(n, g, self.pad, jitter=self.cfg.jitter, flip=self.cfg.flip)
        data = self.data if self.resident else self.data[rows].to(self.device)
        dev_rows = rows.to(self.device) if self.resident else torch.arange(n, device=self.device)
        try:
            for dtype, tol in ((torch.float32, 1e-4), (self.cfg.out_dtype, 2e-2)):
                ref = augment_rows(data, dev_rows, params.to(self.device), self.mean, self.std, torch.float32)
                got = augment_rows_triton(data, rows if self.resident else torch.arange(n), params, self.mean, self.std, dtype)
                err = float(((got.float() - ref).abs() / (1.0 + ref.abs())).max())
                if not err <= tol:
                    return f"differs from the torch ops by {err:.3g} in {dtype}"
        except Exception as e:  # noqa: BLE001 - a compiler or driver failure: fall back
            return f"{type(e).__name__}: {str(e)[:300]}"
        return None

    def stream(self, generator: torch.Generator) -> Iterator[tuple[TaskBatch, Tensor, Any]]:
        while True:
            plans, states = [], []
            for _ in range(self.group):  # the generator's state after each plan: exact resume per batch
                plans.append(plan_batch(self.offsets, self.cfg, self.pad, generator, self.groups))
                states.append(generator.get_state())
            event = None
            if self.side is not None:
                with torch.cuda.stream(self.side):
                    batches = self.make_device_group(plans)
                    event = torch.cuda.Event()
                    event.record(self.side)
            elif self.device_path:
                batches = self.make_device_group(plans)
            else:
                batches = [self.make_cpu(p) for p in plans]
            for batch, state in zip(batches, states):
                yield batch, state, event

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
            from fsmtl.pipelines.numba_aug import augment_rows_numba

            out = self.pool.get((plan.rows.numel(), *self.np_data.shape[1:]))
            x = self._finish(augment_rows_numba(self.np_data, plan.rows, plan.params, self.mean, self.std, out=out, check=False))
        else:
            data = self.data if self.data is not None else torch.from_numpy(self.np_data[plan.rows.numpy()])
            rows = plan.rows if self.data is not None else torch.arange(plan.rows.numel())
            x = augment_rows(data, rows, plan.params, self.mean, self.std, self.cfg.out_dtype, self.cfg.channels_last, check=False)
        if plan.warp is not None:
            x = warp_batch(x, plan.warp, plan.elastic)
        return TaskBatch(x, plan.task, plan.label, plan.global_class)

    def make_device(self, plan: BatchPlan) -> TaskBatch:
        """Realise one plan on ``cfg.device`` (on CUDA, call under the side stream)."""
        return self.make_device_group([plan])[0]

    def make_device_group(self, plans: list[BatchPlan]) -> list[TaskBatch]:
        """Realise consecutive plans with one upload and one set of launches on ``cfg.device``.

        Returns one :class:`TaskBatch` per plan; their tensors are views of the group's."""
        dev, plan = self.device, cat_plans(plans)
        n = plan.rows.numel()
        rows = plan.rows
        if self.resident:
            data = self.data
        else:  # past the memory budget: the group's rows gathered on the host, one async copy
            staged = torch.empty((n, *self.data.shape[1:]), dtype=torch.uint8, pin_memory=dev.type == "cuda")
            torch.index_select(self.data, 0, plan.rows, out=staged)
            data = staged.to(dev, non_blocking=True)
            rows = torch.arange(n)
        # one host-to-device copy of every integer the group needs (pinned, so asynchronous); the
        # kernel's five rows (row, top, left, flip, contrast slot) first, in pack_plan's layout
        coef, head = None, rows[None]
        if plan.params is not None and self.kernel == "triton":
            from fsmtl.pipelines.triton_aug import pack_plan

            head, coef = pack_plan(rows, plan.params, data.shape[3])
        ints = _upload(torch.cat([head, torch.stack([plan.task, plan.label, plan.global_class])]), dev)
        rows_d, (task, label, global_class) = ints[0], ints[-3:]
        if plan.params is None:
            x = normalize_batch(data[rows_d], self.mean, self.std, self.cfg.out_dtype, self.cfg.channels_last)
        elif coef is not None:
            from fsmtl.pipelines.triton_aug import augment_packed

            x = augment_packed(
                data, ints, _upload(coef, dev), self.pad, plan.params.factors is not None,
                self.mean, self.std, self.cfg.out_dtype, self.cfg.channels_last,
            )  # fmt: skip
        else:
            x = augment_rows(
                data, rows_d, plan.params.to(dev), self.mean, self.std, self.cfg.out_dtype, self.cfg.channels_last, check=False
            )  # fmt: skip
        if plan.warp is not None:
            x = warp_batch(x, _upload(plan.warp, dev), None if plan.elastic is None else _upload(plan.elastic, dev))
        b = self.cfg.batch_images
        return [TaskBatch(*(t[i * b : (i + 1) * b] for t in (x, task, label, global_class))) for i in range(len(plans))]

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
                from fsmtl.pipelines.numba_aug import augment_rows_numba

                x = augment_rows_numba(np.ascontiguousarray(images.numpy()), rows, plan.params, mean, std, check=False)
                x = (x if cfg.channels_last else x.contiguous()).to(cfg.out_dtype)
            else:
                imgs = images.to(device, non_blocking=True)
                x = augment_rows(imgs, rows.to(device), plan.params.to(device), mean, std, cfg.out_dtype, cfg.channels_last, check=False)
            return TaskBatch(x, plan.task.to(device), plan.label.to(device), plan.global_class.to(device))

        return augment

    def close(self) -> None:
        self.data = None
        self.np_data = None
