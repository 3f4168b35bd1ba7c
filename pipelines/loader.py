"""The pipelines stage's entry point: ``build_task_loader(split, mean, std, cfg) -> TaskLoader``.

Every back end follows the same plan: the CPU generator draws a batch's episodes (which rows,
which classes) and its augmentation parameters (:func:`plan_batch`); the back end turns the plan
into a :class:`TaskBatch`. Because all randomness comes from one CPU ``torch.Generator``, a seed
gives the same episodes on every device, and saving the generator's state after each consumed
batch gives exact resume. (The ``reference`` back end is the exception for augmentation: it
keeps torchvision's own per-image randomness, as the seed does; see docs/pipelines.md.)
"""


from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from fsmtl.core.errors import FsmtlError
from fsmtl.core.checks import check_int, describe
from fsmtl.pipelines.config import PipelineConfig, stream_config, check_request
from fsmtl.pipelines.types import Backend, TaskBatch
from fsmtl.preprocess.shards import SplitData


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
            "backend": self.cfg.backend, "seed": self.cfg.seed, "config": stream_config(self.cfg),
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
        ours = {"stream": _stream_family(self.cfg.backend), "seed": self.cfg.seed, **stream_config(self.cfg)}
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
