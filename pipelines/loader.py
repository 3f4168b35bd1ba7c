"""The pipelines stage's entry point: ``build_task_loader(split, mean, std, cfg) -> TaskLoader``.

Every back end follows the same plan: the CPU generator draws a batch's episodes (which rows,
which classes) and its augmentation parameters (:func:`plan_batch`); the back end turns the plan
into a :class:`TaskBatch`. Because all randomness comes from one CPU ``torch.Generator``, a seed
gives the same episodes on every device, and saving the generator's state after each consumed
batch gives exact resume. (The ``reference`` back end is the exception for augmentation: it
keeps torchvision's own per-image randomness, as the seed does; see docs/pipelines.md.)
"""

from __future__ import annotations

import functools
import importlib
import math
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, NamedTuple, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from fsmtl.errors import FsmtlError
from fsmtl.pipelines.augment import LeeParams, default_padding, draw_lee_params
from fsmtl.pipelines.checks import check_int, check_mean_std, check_out_dtype, describe
from fsmtl.pipelines.episodes import sample_episode_indices
from fsmtl.preprocess.shards import SplitData

BACKENDS = ("torch", "dali", "ffcv", "reference")
_BACKEND_MODULES = {"dali": "nvidia.dali", "ffcv": "ffcv"}
# the settings that decide the stream of batches (with backend and seed): a saved loader state
# resumes only a loader that has the same ones
_STREAM_FIELDS = ("ways", "shots", "queries", "tasks_per_batch", "augment", "padding", "jitter", "flip")


@dataclass(frozen=True)
class PipelineConfig:
    """How training batches are made (the pipelines stage's only source of defaults)."""

    backend: str = "torch"
    ways: int = 5
    shots: int = 5
    queries: int = 5
    tasks_per_batch: int = 6
    augment: str = "lee"  # "lee" | "none"
    padding: int | None = None  # None -> 8 at >= 64 px, 4 below
    jitter: bool = True  # colour jitter (Omniglot turns it off)
    flip: bool = True
    out_dtype: torch.dtype = torch.float32
    channels_last: bool = True
    seed: int = 0
    workers: int | None = None  # reference/ffcv/dali CPU workers; None -> os.cpu_count()
    device: str = "cpu"
    memory_budget_gb: float | None = None  # split larger than this stays in pinned host memory
    prefetch: bool = True
    # the torch back end's device path (CUDA): "auto" = the fused Triton kernel where it imports
    # and passes a self-check against the torch ops, else the torch ops; "triton"; "torch"
    device_kernel: str = "auto"
    group_images: int = 2048  # device path: whole batches planned and augmented per launch, ~this many images
    progress: bool = True  # progress bars of start-up work (an FFCV export of a split without one)

    def __post_init__(self) -> None:
        check_config(self)

    @property
    def per_class(self) -> int:
        return self.shots + self.queries

    @property
    def batch_images(self) -> int:
        return self.tasks_per_batch * self.ways * self.per_class


def check_config(cfg: PipelineConfig) -> None:
    """The settings on their own: types and ranges (those that depend on the split are checked
    by :func:`check_request`). Run by ``PipelineConfig.__init__`` (and ``dataclasses.replace``).

    Raises:
        FsmtlError: naming the setting, what was expected and what was found.
    """
    for name, options in (("backend", BACKENDS), ("augment", ("lee", "none")), ("device_kernel", ("auto", "triton", "torch"))):
        v = getattr(cfg, name)
        if not isinstance(v, str) or v not in options:
            raise FsmtlError(f"pipeline {name}: expected one of {', '.join(map(repr, options))}, got {v!r}")
    for name, lo in (("ways", 1), ("shots", 1), ("queries", 0), ("tasks_per_batch", 1), ("group_images", 1)):
        check_int(getattr(cfg, name), f"pipeline {name}", lo)
    for name in ("padding", "workers"):  # None: the default
        if getattr(cfg, name) is not None:
            check_int(getattr(cfg, name), f"pipeline {name} (or None)", 0)
    check_int(cfg.seed, "pipeline seed", -(2**63), 2**64 - 1)  # torch.Generator.manual_seed's range
    for name in ("jitter", "flip", "channels_last", "prefetch", "progress"):
        if not isinstance(getattr(cfg, name), (bool, np.bool_)):
            raise FsmtlError(f"pipeline {name}: expected True or False, got {describe(getattr(cfg, name))}")
    check_out_dtype(cfg.out_dtype, "pipeline out_dtype")
    gb = cfg.memory_budget_gb
    if gb is not None and (isinstance(gb, bool) or not isinstance(gb, (int, float)) or not math.isfinite(gb) or gb < 0):
        raise FsmtlError(f"pipeline memory_budget_gb: expected None or a number >= 0, got {describe(gb)}")
    parse_device(cfg.device)


def parse_device(device: object) -> torch.device:
    """``cfg.device`` as a ``torch.device`` of type cpu or cuda (availability: :func:`check_request`)."""
    d = None
    if isinstance(device, (str, torch.device)):
        try:
            d = torch.device(device)
        except (RuntimeError, ValueError):
            pass
    if d is None or d.type not in ("cpu", "cuda"):
        raise FsmtlError(f"pipeline device: expected 'cpu', 'cuda' or 'cuda:N', got {describe(device)}")
    return d


class TaskBatch(NamedTuple):
    """One multi-task training batch, all tensors on the configured device.

    B = T * ways * (shots + queries), ordered task-major, then way, then image.

    Attributes:
        images: float [B, C, H, W], normalised (channels_last strides by default).
        task: int64 [B] in [0, T).
        label: int64 [B] in [0, ways): the class's position within its task.
        global_class: int64 [B]: the split-level class id (the MTL head row).
    """

    images: Tensor
    task: Tensor
    label: Tensor
    global_class: Tensor


class BatchPlan(NamedTuple):
    """A batch decided but not yet made: CPU tensors drawn from the generator."""

    rows: Tensor  # int64 [B] rows of the split
    task: Tensor  # int64 [B]
    label: Tensor  # int64 [B]
    global_class: Tensor  # int64 [B]
    params: LeeParams | None  # None when cfg.augment == "none"


@functools.lru_cache(maxsize=16)
def _task_and_label(t: int, n: int, k: int) -> tuple[Tensor, Tensor]:
    """int64 [t * n * k] each: the task of every image and its label within the task."""
    return torch.arange(t).repeat_interleave(n * k), torch.arange(n).repeat_interleave(k).repeat(t)


def plan_batch(class_offsets: Tensor, cfg: PipelineConfig, pad: int, generator: torch.Generator) -> BatchPlan:
    """Draw one batch's episodes and augmentation parameters (CPU, vectorised).

    Args:
        class_offsets: int64 [n_classes + 1] (CPU).
        pad: crop padding.
        generator: the loader's CPU generator (advanced by this call).
    """
    t, n, k = cfg.tasks_per_batch, cfg.ways, cfg.per_class
    rows, classes = sample_episode_indices(class_offsets, t, n, k, generator)
    task, label = (x.clone() for x in _task_and_label(t, n, k))  # the same every batch: built once
    global_class = classes.unsqueeze(2).expand(t, n, k).reshape(-1)
    params = None
    if cfg.augment == "lee":
        params = draw_lee_params(t * n * k, generator, pad, jitter=cfg.jitter, flip=cfg.flip)
    return BatchPlan(rows.reshape(-1), task, label, global_class, params)


class Backend(Protocol):
    """What each back end provides to :class:`TaskLoader`."""

    def stream(self, generator: torch.Generator) -> Iterator[tuple[TaskBatch, Tensor, Any]]:
        """Yield (batch, generator state after planning it, CUDA event or None) forever."""
        ...

    def close(self) -> None: ...


def _stream_family(backend: str) -> str:
    """Back ends whose batches come from the same planned stream ("planned"), or "reference"."""
    return "reference" if backend == "reference" else "planned"


def _take(it: Iterator[Any], n: int) -> list[Any]:
    """The next ``n`` items of ``it`` (one hand-off of the prefetch thread)."""
    return [next(it) for _ in range(n)]


class TaskLoader:
    """An infinite iterator of :class:`TaskBatch`, prefetching one chunk ahead.

    The prefetch runs on a background thread (the augmentation kernels release the GIL; on CUDA
    the batch is made on a side stream, and the consumer's stream waits on its event). A back end
    that makes batches in groups (the torch back end's device path) says so by ``chunk``: the
    thread then hands over a whole group at a time, so the thread hand-off (tens of microseconds)
    is paid once a group, not once a batch.
    """

    def __init__(self, backend: Backend, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self._backend = backend
        self._gen = torch.Generator().manual_seed(cfg.seed)
        self._state = self._gen.get_state()
        self._consumed = 0
        # back ends with their own asynchrony (DataLoader workers, FFCV) opt out of the thread
        threaded = cfg.prefetch and getattr(backend, "prefetch_thread", True)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="fsmtl-prefetch") if threaded else None
        self._chunk = max(1, int(getattr(backend, "chunk", 1)))
        self._it: Iterator[tuple[TaskBatch, Tensor, Any]] | None = None
        self._pending: Future | None = None
        self._ready: deque[tuple[TaskBatch, Tensor, Any]] = deque()  # handed over, not yet handed out
        self._closed = False
        self._start()

    def _start(self) -> None:
        self._it = self._backend.stream(self._gen)
        if self._pool is not None:
            self._pending = self._pool.submit(_take, self._it, self._chunk)

    def _stop(self) -> None:
        self._ready.clear()
        if self._pending is not None:
            try:
                self._pending.result()
            except Exception:  # noqa: BLE001 - the batch is being discarded anyway
                pass
            self._pending = None
        if self._it is not None and hasattr(self._it, "close"):
            self._it.close()  # type: ignore[union-attr]
        self._it = None

    @property
    def backend(self) -> Backend:
        """The back end object making the batches (for inspection, e.g. by benchmarks)."""
        return self._backend

    def __iter__(self) -> "TaskLoader":
        return self

    def __next__(self) -> TaskBatch:
        if self._closed or self._it is None:
            raise RuntimeError("TaskLoader is closed")
        if not self._ready:
            if self._pending is not None:
                self._ready.extend(self._pending.result())
                self._pending = self._pool.submit(_take, self._it, self._chunk)  # type: ignore[union-attr]
            else:
                self._ready.append(next(self._it))
        batch, state, event = self._ready.popleft()
        if event is not None:  # made on a side stream: order the consumer (the device's current stream) after it
            stream = torch.cuda.current_stream(batch.images.device)
            stream.wait_event(event)
            for t in batch:
                t.record_stream(stream)
        self._state = state
        self._consumed += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The state after the last batch handed out: loading it resumes with the next one.

        Holds the back end, seed and the settings that decide the batches (``config``), so that
        :meth:`load_state_dict` can refuse a state saved by a loader making other batches."""
        return {
            "backend": self.cfg.backend, "seed": self.cfg.seed, "config": _stream_config(self.cfg),
            "batches": self._consumed, "generator": self._state.clone(),
        }  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume exactly after the batch at which ``state`` was saved.

        The state is checked in full before the loader is touched, so a refused state leaves the
        loader as it was.

        Raises:
            RuntimeError: the loader is closed ("TaskLoader is closed").
            FsmtlError: ``state`` is not a :meth:`state_dict` of a loader with this one's back end,
                seed and settings (the message names what differs), or is damaged.
        """
        if self._closed:
            raise RuntimeError("TaskLoader is closed: load_state_dict needs an open loader (build a new one)")
        generator, batches = self._check_state(state)
        self._stop()
        self._gen.set_state(generator)
        self._state = generator.clone()
        self._consumed = batches
        self._start()

    def _check_state(self, state: Mapping[str, Any]) -> tuple[Tensor, int]:
        """``state``'s generator state and batch count, after checking it fits this loader."""
        if not isinstance(state, Mapping):
            raise FsmtlError(f"loader state: expected the dict TaskLoader.state_dict() returns, got {describe(state)}")
        missing = [k for k in ("backend", "seed", "batches", "generator") if k not in state]
        if missing:
            raise FsmtlError(f"loader state: missing {', '.join(missing)} (expected the dict TaskLoader.state_dict() returns)")
        # torch, ffcv and dali plan every batch with plan_batch on this generator: one task stream,
        # so a run may switch among them; the reference back end draws its own
        ours = {"stream": _stream_family(self.cfg.backend), "seed": self.cfg.seed, **_stream_config(self.cfg)}
        saved = {"stream": _stream_family(state["backend"]), "seed": state["seed"], **dict(state.get("config") or {})}
        differ = [k for k in ours if k in saved and saved[k] != ours[k]]  # (older states hold no config)
        if differ:
            was = ", ".join(f"{k}={saved[k]!r}" for k in differ)
            now = ", ".join(f"{k}={ours[k]!r}" for k in differ)
            hint = (" (the torch, ffcv and dali back ends share one task stream and may replace each other; "
                    "reference has its own)" if "stream" in differ else "")
            raise FsmtlError(f"loader state: saved by a loader with {was}; this loader has {now}: resume with the same "
                             f"settings{hint}")  # fmt: skip
        batches = check_int(state["batches"], "loader state: batches", 0)
        gen = state["generator"]
        want = self._gen.get_state()
        if not isinstance(gen, Tensor) or gen.dtype != want.dtype or gen.shape != want.shape:
            raise FsmtlError(
                f"loader state: generator: expected a CPU torch.Generator state ({want.dtype} {tuple(want.shape)}), got {describe(gen)}"
            )
        gen = gen.detach().cpu()
        try:
            torch.Generator().set_state(gen)  # a scratch generator: ours stays as it is if this fails
        except RuntimeError as e:
            raise FsmtlError(f"loader state: generator: not a valid generator state ({str(e).splitlines()[0]})") from None
        return gen, batches

    def close(self) -> None:
        """Stop prefetching and release the back end's threads, processes and caches."""
        self._closed = True
        self._stop()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._backend.close()

    def __enter__(self) -> "TaskLoader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stream_config(cfg: PipelineConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in _STREAM_FIELDS}


def check_request(split: SplitData, mean: Sequence[float], std: Sequence[float], cfg: PipelineConfig) -> int:
    """Reject impossible requests before any work starts; return the crop padding.

    Raises:
        FsmtlError: naming the setting and what was expected.
    """
    if not isinstance(cfg, PipelineConfig):
        raise FsmtlError(f"pipeline config: expected a PipelineConfig, got {describe(cfg)}")
    check_config(cfg)  # (already run by PipelineConfig's __init__; cheap)
    images = split.images
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
        raise FsmtlError(f"split {split.name!r}: expected uint8 [N,H,W,C] images, got {images.dtype} {images.shape}")
    if images.shape[1] != images.shape[2]:
        raise FsmtlError(f"split {split.name!r}: expected square images, got {images.shape[1]}x{images.shape[2]}")
    offsets = np.asarray(split.class_offsets)
    if offsets.ndim != 1 or offsets[0] != 0 or offsets[-1] != len(images) or np.any(np.diff(offsets) < 1):
        raise FsmtlError(f"split {split.name!r}: class_offsets do not cover its {len(images)} images")
    check_mean_std(mean, std, images.shape[3], "pipeline")
    n_classes = len(offsets) - 1
    if cfg.ways > n_classes:
        raise FsmtlError(f"pipeline ways: split {split.name!r} has {n_classes} classes, cannot make {cfg.ways}-way tasks")
    smallest = int(np.diff(offsets).min())
    if cfg.per_class > smallest:
        raise FsmtlError(
            f"pipeline shots+queries: {cfg.shots}+{cfg.queries} = {cfg.per_class} images per class, "
            f"but the smallest class of split {split.name!r} has {smallest}"
        )
    pad = default_padding(images.shape[1]) if cfg.padding is None else cfg.padding
    if not 0 <= pad < images.shape[1]:
        raise FsmtlError(f"pipeline padding: expected 0 <= padding < {images.shape[1]}, got {pad}")
    device = parse_device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FsmtlError(f"pipeline device: {cfg.device!r} requested but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise FsmtlError(f"pipeline device: {cfg.device!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
    module = _BACKEND_MODULES.get(cfg.backend)
    if module is not None:
        try:
            if module == "ffcv":  # its import resets the thread counts; this one restores them
                from fsmtl.preprocess.export_ffcv import import_ffcv

                import_ffcv()
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - ImportError or a broken native library
            raise FsmtlError(f"pipeline backend {cfg.backend!r}: {module} is not installed ({e}); pip install 'fsmtl[{cfg.backend}]'") from None
    return pad


def build_task_loader(split: SplitData, mean: Sequence[float], std: Sequence[float], cfg: PipelineConfig) -> TaskLoader:
    """An infinite, seeded iterator of multi-task training batches over ``split``.

    Args:
        split: the shard split (images uint8 [N, H, W, C], labels sorted, class_offsets).
        mean, std: per-channel normalisation, 0..1 scale (the shard's meta.json values).
        cfg: the back end, task shape, augmentation, device and seed.

    Raises:
        FsmtlError: for impossible requests (see :func:`check_request`), before any work starts.
    """
    pad = check_request(split, mean, std, cfg)
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if cfg.backend == "torch":
        from fsmtl.pipelines.backend_torch import TorchBackend

        backend: Backend = TorchBackend(split, mean, std, cfg, pad)
    elif cfg.backend == "reference":
        from fsmtl.pipelines.backend_reference import ReferenceBackend

        backend = ReferenceBackend(split, mean, std, cfg, pad)
    elif cfg.backend == "dali":
        from fsmtl.pipelines.backend_dali import DaliBackend

        backend = DaliBackend(split, mean, std, cfg, pad)
    else:
        from fsmtl.pipelines.backend_ffcv import FfcvBackend

        backend = FfcvBackend(split, mean, std, cfg, pad)
    return TaskLoader(backend, cfg)


def default_workers(cfg: PipelineConfig) -> int:
    """CPU workers for the back ends that use them: cfg.workers, else every core."""
    return int(cfg.workers) if cfg.workers is not None else (os.cpu_count() or 1)


def concat_splits(splits: list[SplitData]) -> SplitData:
    """Join splits into one (``--trainval``): later splits' labels are offset past earlier ones.

    Images are copied into one in-memory array (no longer memory-mapped).
    """
    if not splits:
        raise FsmtlError("concat_splits: expected at least one split")
    shapes = {tuple(s.images.shape[1:]) for s in splits}
    if len(shapes) != 1:
        raise FsmtlError(f"concat_splits: splits have different image shapes {sorted(shapes)}")
    images = np.concatenate([np.asarray(s.images) for s in splits])
    labels, offsets, classes, categories = [], [np.zeros(1, np.int64)], [], []
    base_label, base_row = 0, 0
    for s in splits:
        labels.append(np.asarray(s.labels, dtype=np.int64) + base_label)
        offsets.append(np.asarray(s.class_offsets[1:], dtype=np.int64) + base_row)
        classes.extend(s.classes)
        categories.extend(s.categories if s.categories is not None else [])
        base_label += s.n_classes
        base_row += len(s.images)
    has_cat = all(s.categories is not None for s in splits)
    name = "+".join(s.name for s in splits)
    return SplitData(name, images, np.concatenate(labels), np.concatenate(offsets), classes, categories if has_cat else None)
