"""The seed's pipeline, faithfully: the baseline every pipeline benchmark compares against.

Per image: a PIL image, ``RandomCrop(size, padding=p)``, ``ColorJitter(0.4, 0.4, 0.4)``,
``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize(mean, std)`` (torchvision), in a PyTorch
``DataLoader`` with one worker per core (``cfg.workers``; 0 = everything in the main process, the
seed's literal way). Tasks come from our episode sampler, planned in the main process as whole
multi-task batches (a batch sampler), so the batch structure is identical to the other back ends.
Where learn2learn is installed, ``use_learn2learn=True`` builds the tasks with learn2learn's
``TaskDataset`` / ``NWays`` / ``KShots`` / ``LoadData``, as the seed does.

With learn2learn, tasks are drawn by Python's ``random`` (seeded per worker from cfg.seed; with
0 workers it runs in the main process on the global ``random`` state, which fsmtl never
reseeds), so only the workers > 0 case repeats for a seed, and resume is not exact.
Randomness without learn2learn: the episodes follow the loader's generator (exactly resumable); the augmentation is
torchvision's own per-image draws in the workers, seeded by the DataLoader from cfg.seed, so a
run is reproducible from its start, but resume replays only the episodes, not the pixels.
"""

from __future__ import annotations

import collections
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from fsmtl.core.device import cpu_workers
from fsmtl.pipelines.config import PipelineConfig

from fsmtl.pipelines.planning import plan_batch, task_groups

from fsmtl.pipelines.types import TaskBatch
from fsmtl.core.optional import import_optional
from fsmtl.preprocess.shards import SplitData


def seed_transform(size: int, pad: int, mean: list[float], std: list[float], cfg: PipelineConfig) -> T.Compose:
    """The seed's per-image training transform (crop, jitter, flip, to-tensor, normalise)."""
    ops: list[Any] = []
    if cfg.augment == "lee":
        ops.append(T.RandomCrop(size, padding=pad))
        if cfg.jitter:
            ops.append(T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4))
        if cfg.flip:
            ops.append(T.RandomHorizontalFlip())
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(ops)


class PilDataset(Dataset):
    """``dataset[i] -> (float [C, H, W] transformed, int label)``, one PIL image at a time."""

    def __init__(self, split: SplitData, transform: T.Compose) -> None:
        self.images, self.labels, self.transform = split.images, split.labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        arr = np.asarray(self.images[i])
        img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
        return self.transform(img), int(self.labels[i])


class _PlanSampler:
    """A batch sampler yielding each planned batch's rows; records plans for the consumer."""

    def __init__(self, offsets: Tensor, cfg: PipelineConfig, pad: int, generator: torch.Generator, groups=None) -> None:
        self.offsets, self.cfg, self.pad, self.gen, self.groups = offsets, cfg, pad, generator, groups
        self.plans: collections.deque = collections.deque()

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            plan = plan_batch(self.offsets, self.cfg, self.pad, self.gen, self.groups)
            self.plans.append((plan, self.gen.get_state()))
            yield plan.rows.tolist()


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: workers ignore Ctrl-C and SIGTERM (a terminal, torchrun or Slurm
    signals the whole process group); the trainer stops them after its checkpoint, and they exit
    with it. A worker killed by the signal would crash the run before it could save anything."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _SeedPythonRandom:
    """Seeds Python's ``random`` in each worker (learn2learn samples with it); ignores stop signals."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, worker_id: int) -> None:
        import random

        ignore_stop_signals(worker_id)
        random.seed(self.seed + worker_id)


class _Zeros:
    """An endless sampler of index 0 (learn2learn's TaskDataset ignores the index)."""

    def __iter__(self) -> Iterator[int]:
        while True:
            yield 0


def learn2learn_available() -> bool:
    try:
        import_optional("learn2learn")
    except Exception:  # noqa: BLE001 - optional extra
        return False
    return True


class ReferenceBackend:
    """torchvision per-image transforms in a DataLoader (workers = cores unless cfg.workers)."""

    prefetch_thread = False  # the DataLoader prefetches; its workers must fork from the main thread

    def __init__(self, split: SplitData, mean: list[float], std: list[float], cfg: PipelineConfig, pad: int, use_learn2learn: bool | None = None) -> None:
        self.split, self.cfg, self.pad = split, cfg, pad
        self.device = torch.device(cfg.device)
        self.transform = seed_transform(split.images.shape[1], pad, mean, std, cfg)
        self.dataset = PilDataset(split, self.transform)
        self.workers = cpu_workers(cfg.workers)
        self.use_learn2learn = learn2learn_available() if use_learn2learn is None else use_learn2learn

    def _finish(self, x: Tensor) -> Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.to(self.cfg.out_dtype)

    def stream(self, generator: torch.Generator) -> Iterator[tuple[TaskBatch, Tensor, Any]]:
        if self.use_learn2learn and not self.cfg.within_group:  # learn2learn has no grouped tasks
            yield from self._stream_l2l(generator)
            return
        offsets = torch.from_numpy(np.asarray(self.split.class_offsets, dtype=np.int64))
        sampler = _PlanSampler(offsets, self.cfg, self.pad, generator, task_groups(self.split, self.cfg))
        seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(self.cfg.seed)))
        loader = DataLoader(
            self.dataset,
            batch_sampler=sampler,  # type: ignore[arg-type]
            num_workers=self.workers,
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=False,
            prefetch_factor=2 if self.workers > 0 else None,
            worker_init_fn=ignore_stop_signals,
        )
        it = iter(loader)
        try:
            for images, labels in it:
                plan, state = sampler.plans.popleft()
                dev = self.device
                yield TaskBatch(self._finish(images), plan.task.to(dev), plan.label.to(dev), labels.to(dev)), state, None
        finally:
            del it  # shuts the worker processes down

    def _stream_l2l(self, generator: torch.Generator) -> Iterator[tuple[TaskBatch, Tensor, Any]]:
        """The seed's task construction with learn2learn (optional extra; not installed here)."""
        l2l = import_optional("learn2learn")
        from fsmtl.pipelines.episodes import remap_labels

        off = [int(v) for v in self.split.class_offsets]
        # the class tables are known from the shard; without them MetaDataset would load and
        # transform every image once just to read its label
        l2i = {c: list(range(off[c], off[c + 1])) for c in range(len(off) - 1)}
        i2l = {i: c for c, idx in l2i.items() for i in idx}
        meta = l2l.data.MetaDataset(self.dataset, labels_to_indices=l2i, indices_to_labels=i2l)
        cfg = self.cfg
        tasks = l2l.data.TaskDataset(
            meta,
            task_transforms=[
                l2l.data.transforms.NWays(meta, cfg.ways),
                l2l.data.transforms.KShots(meta, cfg.per_class),
                l2l.data.transforms.LoadData(meta),
            ],
            num_tasks=-1,
        )
        dev = self.device
        # TaskDataset(num_tasks=-1) samples a fresh task per __getitem__; workers build them
        seed = int(torch.randint(0, 2**31, (1,), generator=generator))
        it = iter(DataLoader(tasks, batch_size=None, sampler=_Zeros(), num_workers=self.workers, worker_init_fn=_SeedPythonRandom(seed)))  # type: ignore[arg-type]
        while True:
            xs, task, local, glob = [], [], [], []
            for t in range(cfg.tasks_per_batch):
                x, y = next(it)
                y = torch.as_tensor(y, dtype=torch.int64)
                order = torch.argsort(remap_labels(y)[0], stable=True)  # way-major, as the others
                lab, ids = remap_labels(y[order])
                xs.append(x[order])
                task.append(torch.full_like(lab, t))
                local.append(lab)
                glob.append(ids[lab])
            yield TaskBatch(self._finish(torch.cat(xs)), torch.cat(task).to(dev), torch.cat(local).to(dev), torch.cat(glob).to(dev)), generator.get_state(), None

    def close(self) -> None:
        self.dataset = None  # type: ignore[assignment]
