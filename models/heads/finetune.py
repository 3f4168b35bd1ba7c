"""The seed's "tune-all" head: fine-tune the whole network on each task's support set, then restore it.

Per task: a linear head (weights = the support centroids of the L2-normalised features, bias 0),
Adam on the backbone and the head together for ``steps`` full-batch steps of cross-entropy on
the support set, predict the queries, and put the backbone's weights (and BatchNorm statistics)
back exactly as they were. Tasks are sequential because each one changes the whole network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsmtl.models.heads.proto import class_centroids
from fsmtl.core.checks import is_int, is_real
from fsmtl.core.errors import FsmtlError


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of the tune-all head (the seed's values)."""

    steps: int = 10
    lr: float = 1e-3
    train_mode: bool = False  # BatchNorm/dropout in eval mode: 5-25 support images make poor batch statistics

    def __post_init__(self) -> None:
        """Raise FsmtlError for steps not an integer >= 1, lr not a finite number > 0, a non-bool train_mode."""
        if not is_int(self.steps) or self.steps < 1:
            raise FsmtlError(f"head finetune: steps must be an integer >= 1, got {self.steps!r}")
        lr_ok = is_real(self.lr) and 0 < self.lr < math.inf
        if not lr_ok:
            raise FsmtlError(f"head finetune: lr must be a finite number > 0, got {self.lr!r}")
        if not isinstance(self.train_mode, bool):
            raise FsmtlError(f"head finetune: train_mode must be True or False, got {self.train_mode!r}")


def _features(model: nn.Module, images: Tensor, amp_dtype: torch.dtype | None) -> Tensor:
    amp = amp_dtype is not None
    with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=amp):
        feats = model(images)
    return F.normalize(feats.float(), dim=-1)


@torch.inference_mode(False)
@torch.enable_grad()  # it trains: works also when called under no_grad() or inference_mode()
def finetune_predict(
    model: nn.Module,
    support_images: Tensor,
    support_labels: Tensor,
    query_images: Tensor,
    ways: int,
    cfg: FinetuneConfig = FinetuneConfig(),
    amp_dtype: torch.dtype | None = None,
) -> Tensor:
    """Predict one task's queries after fine-tuning; the model is returned unchanged.

    Args:
        model: the backbone, float [B,C,H,W] -> [B,D], on the images' device.
        support_images: float [S, C, H, W], normalised; support_labels: int64 [S] in [0, ways).
        query_images: float [Q, C, H, W], normalised.
        amp_dtype: autocast dtype for the forward passes (None: full precision).

    Returns:
        int64 [Q] predicted labels.
    """
    # clones made here are normal tensors even if the caller made them under inference_mode()
    support_images, query_images, support_labels = support_images.clone(), query_images.clone(), support_labels.clone()
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training = model.training
    grad_flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(True)  # a frozen backbone is still tuned by this head
        with torch.no_grad():
            model.eval()
            init = class_centroids(_features(model, support_images, amp_dtype)[None], support_labels[None], ways)[0]
        head = nn.Linear(init.shape[1], ways).to(support_images.device)
        with torch.no_grad():
            head.weight.copy_(init)
            head.bias.zero_()
        model.train(cfg.train_mode)
        opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=cfg.lr)
        for _ in range(cfg.steps):
            loss = F.cross_entropy(head(_features(model, support_images, amp_dtype)), support_labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            return head(_features(model, query_images, amp_dtype)).argmax(-1)
    finally:
        model.load_state_dict(saved)
        model.train(was_training)
        for p, flag in zip(model.parameters(), grad_flags):
            p.grad = None
            p.requires_grad_(flag)
