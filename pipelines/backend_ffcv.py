"""The FFCV back end: an FFCV ``Loader`` over the split's .beton, in the order our sampler plans.

What FFCV does: reads and decodes the planned rows (``NDArrayDecoder`` over raw uint8 samples)
into batches with its compiled, multi-threaded loader, ahead of the consumer
(``batches_ahead``). What fsmtl does: plans the rows (``plan_batch``, the loader's generator)
``_EPOCH_BATCHES`` batches at a time, gives them to FFCV as one "epoch" of sequential indices,
then applies the Lee19 augmentation to each loaded uint8 batch with the torch back end's
batched op (the numba kernel on CPU, torch ops on CUDA), with the parameters planned from the
loader's generator (so the output equals the torch back end's for the same seed). FFCV's own
transforms cannot express Lee19: ``RandomTranslate`` pads and shifts but fills a fixed colour
and draws from NumPy's global RNG; its ``RandomBrightness``/``RandomContrast``/
``RandomSaturation`` each fire with a probability, in a fixed order, rounding to uint8 after
each step (torchvision's ColorJitter always applies all three, in a random order, in float);
and no FFCV op resumes from a saved generator state.
"""

from __future__ import annotations

import collections
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor

from fsmtl.core.device import cpu_workers
from fsmtl.pipelines.formats import ExportCache, ffcv_file
from fsmtl.pipelines.config import PipelineConfig
from fsmtl.pipelines.planning import plan_batch, task_groups
from fsmtl.pipelines.types import TaskBatch
from fsmtl.preprocess.export_ffcv import keep_thread_counts
from fsmtl.preprocess.shards import SplitData

_EPOCH_BATCHES = 16  # batches planned per FFCV epoch: amortises FFCV's per-epoch start-up


class FfcvBackend:
    """Loads planned rows with FFCV, augments them with the torch back end's kernels."""

    prefetch_thread = False  # FFCV loads batches_ahead in its own threads

    def __init__(self, split: SplitData, mean: list[float], std: list[float], cfg: PipelineConfig, pad: int) -> None:
        from fsmtl.pipelines.backend_torch import TorchBackend

        self.cfg, self.mean, self.std, self.pad = cfg, mean, std, pad
        self.cache = ExportCache()
        self.path = ffcv_file(split, self.cache, progress=cfg.progress)
        self.offsets = torch.from_numpy(np.asarray(split.class_offsets, dtype=np.int64))
        self.groups = task_groups(split, cfg)
        self.device = torch.device(cfg.device)
        # the augmenter: the torch back end over each loaded batch (a tiny stand-in split)
        self._augment = TorchBackend.batch_augmenter(mean, std, cfg)

    def _loader(self, first_order: np.ndarray) -> Any:
        from ffcv.fields.decoders import IntDecoder, NDArrayDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import ToTensor

        return Loader(
            str(self.path),
            batch_size=self.cfg.batch_images,
            num_workers=cpu_workers(self.cfg.workers),
            order=OrderOption.SEQUENTIAL,
            indices=first_order,
            pipelines={"image": [NDArrayDecoder(), ToTensor()], "label": [IntDecoder(), ToTensor()]},
            drop_last=True,
            batches_ahead=2,
        )

    def stream(self, generator: torch.Generator) -> Iterator[tuple[TaskBatch, Tensor, Any]]:
        loader = None
        while True:
            plans = collections.deque()
            for _ in range(_EPOCH_BATCHES):
                plan = plan_batch(self.offsets, self.cfg, self.pad, generator, self.groups)
                plans.append((plan, generator.get_state()))
            order = torch.cat([p.rows for p, _ in plans]).numpy().astype(np.uint64)
            # FFCV sets this thread's torch/numba thread counts to its worker count; undo it
            with keep_thread_counts():
                if loader is None:
                    loader = self._loader(order)
                else:  # same length every epoch, so the loader's len() stays right
                    loader.traversal_order.indices = order
                epoch = iter(loader)
            for images, labels in epoch:
                plan, state = plans.popleft()
                if not torch.equal(labels.view(-1), plan.global_class):
                    raise RuntimeError(f"{self.path}: FFCV returned rows out of the planned order")
                yield self._augment(images, plan), state, None

    def close(self) -> None:
        self.cache.close()
