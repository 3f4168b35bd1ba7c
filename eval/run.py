"""Load a trained run for evaluation or for use on new tasks: ``load_run(path).embed(images)``."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fsmtl.core.device import PYTHON_ARGS, ArgNames, autocast_dtype, resolve_device
from fsmtl.core.checks import is_int
from fsmtl.core.errors import FsmtlError
from fsmtl.train.checkpoint import load_checkpoint



def resolve_checkpoint(
    run: str | os.PathLike[str] | None, checkpoint: str | None = None, names: ArgNames = PYTHON_ARGS
) -> Path:
    """The checkpoint file to load.

    ``run`` a directory: RUN/checkpoints/{checkpoint}.pt for "best" (the default, None) or "last",
    else ``checkpoint`` as a file path (relative to the working directory, or else to RUN).
    ``run`` a file: that file; ``checkpoint`` must then be None, or "best"/"last" matching the
    file's name (best.pt/last.pt), or the same file: a name that disagrees is an error, never
    silently ignored. ``run`` None: ``checkpoint`` must be a file path.
    """
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise FsmtlError(f"{names.checkpoint}: expected best, last or a file path, got {checkpoint!r}")
    named = checkpoint in (None, "best", "last")
    if run is not None and Path(run).is_file():
        path = Path(run)
        if named:
            agrees = checkpoint is None or path.name == f"{checkpoint}.pt"
        else:
            agrees = _same_file(path, checkpoint)  # type: ignore[arg-type]
        if not agrees:
            raise FsmtlError(
                f"{names.show(names.checkpoint, checkpoint)}: {names.show(names.run, str(run))} is itself a "
                f"checkpoint file; give the run directory to pick another checkpoint, or leave "
                f"{names.checkpoint} out"
            )
    elif not named:
        path = Path(checkpoint)  # type: ignore[arg-type]
        if run is not None and not path.is_absolute() and not path.exists():
            path = Path(run) / path
    elif run is None:
        picked = f" ({names.show(names.checkpoint, checkpoint)} picks from a run directory)" if checkpoint else ""
        got = "" if names.cli else ", got None"
        raise FsmtlError(f"{names.run}: expected a run directory or a checkpoint file{got}{picked}")
    else:
        path = Path(run) / "checkpoints" / f"{checkpoint or 'best'}.pt"
    if not path.is_file():
        hint = ""
        if checkpoint in (None, "best") and path.name == "best.pt" and (path.parent / "last.pt").is_file():
            last = names.show(names.checkpoint, "last")
            hint = f"; the run has last.pt (it has not finished a validated epoch): pass {last}"
        raise FsmtlError(f"{path}: checkpoint not found (expected a file written by fsmtl train){hint}")
    return path


def _same_file(a: Path, b: str | os.PathLike[str]) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def embedding_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for embedding with a run's precision setting ("auto" resolves as training
    does on this device); fp16 off CUDA embeds in float32, with a note."""
    if precision == "fp16" and device.type != "cuda":
        print(f"fsmtl eval: fp16 autocast is for CUDA; embedding in fp32 on {device}", file=sys.stderr)
        return None
    return autocast_dtype(precision, device)


@dataclass
class Run:
    """A trained backbone ready to embed images: frozen, in eval mode, on ``device``."""

    model: nn.Module
    path: Path
    config: dict[str, Any]
    data_meta: dict[str, Any]
    device: torch.device
    amp_dtype: torch.dtype | None
    info: dict[str, Any] = field(default_factory=dict)  # epoch, step, best_val_acc, wall_s, snapshot_step

    @property
    def mean(self) -> list[float]:
        return [float(v) for v in self.data_meta["mean"]]

    @property
    def std(self) -> list[float]:
        return [float(v) for v in self.data_meta["std"]]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.data_meta["image_shape"])  # type: ignore[return-value]

    def embed(self, images: np.ndarray | Tensor, batch_size: int = 256) -> Tensor:
        """Features float32 [N, D] on ``self.device`` of uint8 images [N, H, W, C].

        Applies the run's own normalisation (its training data's mean/std) and precision.

        Raises:
            FsmtlError: not uint8, not 4-d, or not the run's image shape.
        """
        from fsmtl.train.protocol import embed_images

        if not is_int(batch_size) or batch_size < 1:
            raise FsmtlError(f"embed: batch_size must be an integer >= 1, got {batch_size!r}")
        self._check_images(images, "embed")
        out = []
        batch_size = int(batch_size)
        for i in range(0, images.shape[0], batch_size):
            chunk = images[i : i + batch_size]
            # a private copy: memory-mapped arrays are read-only, and the copy goes to the device anyway
            x = chunk if isinstance(chunk, Tensor) else torch.from_numpy(np.array(chunk))
            out.append(embed_images(self.model, x.to(self.device), self.mean, self.std, self.amp_dtype))
        if not out:
            raise FsmtlError("embed: no images given (N = 0)")
        return torch.cat(out)

    def _check_images(self, images: Any, what: str) -> None:
        if not isinstance(images, (Tensor, np.ndarray)):
            raise FsmtlError(f"{what}: expected a uint8 numpy array or tensor, got {type(images).__name__}")
        dtype_ok = images.dtype == (torch.uint8 if isinstance(images, Tensor) else np.uint8)
        if not dtype_ok or images.ndim != 4:
            raise FsmtlError(f"{what}: expected uint8 images [N,H,W,C], got {images.dtype} {list(images.shape)}")
        if tuple(images.shape[1:]) != self.image_shape:
            raise FsmtlError(f"{what}: this run takes images {list(self.image_shape)} (H,W,C), got {list(images.shape[1:])}")

    def predict(
        self, support_images: np.ndarray | Tensor, support_labels: np.ndarray | Tensor,
        query_images: np.ndarray | Tensor, head: str = "logreg", **options: Any,
    ) -> Tensor:
        """One task from images: fit ``head`` on the support images, predict the queries.

        Args:
            support_images, query_images: uint8 [S, H, W, C] and [Q, H, W, C] in the run's shape
                (Q may be 0: an empty prediction, after the same checks).
            support_labels: integers [S] in 0..ways-1, every class present.
            head: a feature head of :func:`eval.adapt` (embeds with the frozen backbone, then fits),
                or "finetune" (the seed's tune-all: Adam on the whole network and a centroid-initialised
                head for ``steps`` (10) at ``lr`` (1e-3) on the support set; the weights are restored).
            options: the head's options (``C=3.0`` for logreg; ``steps``, ``lr`` for finetune).

        Returns:
            int64 [Q] predicted labels on ``self.device``.

        Raises:
            FsmtlError: images not uint8 [N, H, W, C] of the run's shape, labels not [S] integers
                0..ways-1 with every class present, an unknown head or option.
        """
        from fsmtl.models.heads import adapt, check_options
        from fsmtl.models.heads.checks import as_head_tasks
        from fsmtl.models.heads.finetune import FinetuneConfig, finetune_predict
        from fsmtl.pipelines.transforms import normalize_batch

        self._check_images(support_images, "predict: support_images")
        self._check_images(query_images, "predict: query_images")
        n_support = support_images.shape[0]
        if n_support == 0:
            raise FsmtlError("predict: support_images is empty (expected at least one image of every class)")
        try:
            labels = torch.as_tensor(support_labels)
        except (TypeError, ValueError, RuntimeError):
            raise FsmtlError(f"predict: support_labels must be an array or tensor, got {type(support_labels).__name__}") from None
        if labels.shape != (n_support,):
            raise FsmtlError(f"predict: support_labels must be [{n_support}] (one per support image: support_images is "
                             f"{list(support_images.shape)}), got {list(labels.shape)}")  # fmt: skip
        labels = labels.to(self.device)
        # the label checks of every head (integers 0..ways-1, every class present), without features yet
        stand_in = torch.zeros(n_support, 1, device=self.device)
        b = as_head_tasks(stand_in, labels, torch.zeros(0, 1, device=self.device), what="predict")
        if head == "finetune":
            known = [f.name for f in fields(FinetuneConfig)]
            unknown = sorted(set(options) - set(known))
            if unknown:
                raise FsmtlError(f"head finetune: unknown option(s) {unknown}; it takes {known}")
            cfg = FinetuneConfig(**options)
        else:
            check_options(head, options)  # an unknown head or option fails here, before any embedding
        if query_images.shape[0] == 0:
            return torch.zeros(0, dtype=torch.int64, device=self.device)
        if head != "finetune":
            return adapt(self.embed(support_images), b.labels[0], self.embed(query_images), head=head, **options)

        def on_device(x: np.ndarray | Tensor) -> Tensor:
            return (x if isinstance(x, Tensor) else torch.from_numpy(np.array(x))).to(self.device)

        xs = normalize_batch(on_device(support_images), self.mean, self.std)
        xq = normalize_batch(on_device(query_images), self.mean, self.std)
        return finetune_predict(self.model, xs, b.labels[0], xq, b.ways, cfg, self.amp_dtype)


def load_run(
    path: str | os.PathLike[str] | None, checkpoint: str | None = None, device: str | torch.device = "cpu",
    precision: str | None = None,
) -> Run:
    """Load a run's checkpoint and rebuild its backbone.

    Args:
        path: the run directory (holding checkpoints/best.pt, last.pt), or a checkpoint file.
        checkpoint: for a run directory: "best" (None, the default), "last", or a checkpoint file
            path. For a checkpoint file ``path``: leave it None (a "best"/"last" that does not
            match the file's name is an error, not ignored).
        device: "cpu", "cuda", "cuda:N" or "auto".
        precision: override the run's training precision ("auto", "bf16", "fp16", "fp32").

    Returns:
        A :class:`Run` whose ``model`` is frozen and in eval mode.

    Raises:
        FsmtlError: no such checkpoint, a foreign or damaged file, CUDA asked for but missing.
    """
    return open_run(path, checkpoint, device, precision, PYTHON_ARGS)


def open_run(
    path: str | os.PathLike[str] | None, checkpoint: str | None, device: str | torch.device,
    precision: str | None, names: ArgNames,
) -> Run:
    """:func:`load_run`, with errors naming the inputs as ``names`` says (``CLI_ARGS`` for fsmtl eval)."""
    from fsmtl.models import build_model

    dev = resolve_device(device, names)
    ckpt_path = resolve_checkpoint(path, checkpoint, names)
    ckpt = load_checkpoint(ckpt_path)
    meta = ckpt["data_meta"]
    kwargs = dict(ckpt["model_kwargs"])
    h, _, c = (int(v) for v in meta["image_shape"])
    kwargs.setdefault("in_channels", c)
    kwargs.setdefault("image_size", h)
    model = build_model(ckpt["model_name"], **kwargs)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise FsmtlError(f"{ckpt_path}: weights do not fit model {ckpt['model_name']} {kwargs}: {e}") from e
    model.to(dev).eval().requires_grad_(False)
    config = dict(ckpt["config"] or {})
    amp = embedding_dtype(precision or str(config.get("precision", "fp32")), dev)
    info = {k: ckpt.get(k) for k in ("epoch", "step", "best_val_acc", "wall_s", "snapshot_step")}
    return Run(model, ckpt_path, config, dict(meta), dev, amp, info)
