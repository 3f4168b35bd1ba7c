"""Training objectives by name: the hook through which episodic baselines join the same loop.

An algorithm maps backbone features of one step's batch to (loss, accuracy). The loop never
branches on the algorithm's name: it looks up an :class:`Algorithm` here and calls ``loss``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsmtl.train.mtl import mtl_loss
from fsmtl.train.shape import StepShape


LossFn = Callable[[Tensor, Tensor, Tensor, Tensor, StepShape], tuple[Tensor, Tensor]]
# step(backbone, heads [C,D], images [B,C,H,W], global_class [B], label [B], shape) -> (loss, acc)
StepFn = Callable[[nn.Module, Tensor, Tensor, Tensor, Tensor, StepShape], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Algorithm:
    """``loss(features [B,D], heads [C,D], global_class [B], label [B], shape) -> (loss, acc)``.

    ``uses_heads``: whether the algorithm trains the global head matrix (MTL) or needs none.
    ``step``: when set, the loop calls it with the backbone and images instead of ``loss`` on
    features (MAML adapts the whole network per task). ``requires``: an optional module it imports.
    """

    name: str
    loss: LossFn
    uses_heads: bool
    step: StepFn | None = None
    requires: str | None = None


def _mtl(features: Tensor, heads: Tensor, global_class: Tensor, label: Tensor, s: StepShape) -> tuple[Tensor, Tensor]:
    return mtl_loss(features, heads, global_class, label, s.n_tasks, s.ways, s.norm)


def protonet_loss(
    features: Tensor, heads: Tensor, global_class: Tensor, label: Tensor, s: StepShape
) -> tuple[Tensor, Tensor]:
    """Prototypical Networks: per task, prototypes = support means, logits = -squared distance,
    cross-entropy on the queries. ``heads``/``global_class`` are unused.

    Args:
        features: float [B, D], B = T*ways*(shots+queries), task-major then way then image; the
            first ``shots`` images of each way are its support set.
    """
    feats = features.float()
    if s.norm:
        feats = F.normalize(feats, dim=-1)
    feats = feats.view(s.n_tasks, s.ways, s.per_class, -1)
    protos = feats[:, :, : s.shots].mean(dim=2)  # [T, ways, D]
    query = feats[:, :, s.shots :].reshape(s.n_tasks, s.ways * s.queries, -1)  # [T, ways*Q, D]
    logits = -torch.cdist(query, protos).pow(2)  # [T, ways*Q, ways]
    target = torch.arange(s.ways, device=features.device).repeat_interleave(s.queries).repeat(s.n_tasks)
    flat = logits.reshape(-1, s.ways)
    return F.cross_entropy(flat, target), (flat.argmax(-1) == target).float().mean()


def baseline_algorithms() -> dict[str, Algorithm]:
    """The meta-learning baselines of ``train.meta_baselines`` with their documented defaults."""
    from functools import partial

    from fsmtl.train import meta_baselines as mb

    c = mb.MetaConfig()
    anil = partial(mb.anil_loss, inner_lr=c.anil_inner_lr, steps=c.anil_steps, first_order=c.anil_first_order)
    maml = partial(mb.maml_step, inner_lr=c.maml_inner_lr, steps=c.maml_steps, first_order=c.maml_first_order)
    svm = partial(mb.metaoptnet_loss, C=c.svm_C, iters=c.svm_iters, scale=c.svm_scale)
    return {
        "metaoptnet": Algorithm("metaoptnet", svm, uses_heads=False),
        "anil": Algorithm("anil", anil, uses_heads=True, requires="learn2learn"),
        "maml": Algorithm("maml", mb.needs_model, uses_heads=True, step=maml, requires="learn2learn"),
    }


ALGORITHMS: Mapping[str, Algorithm] = MappingProxyType({
    "mtl": Algorithm("mtl", _mtl, uses_heads=True),
    "protonet": Algorithm("protonet", protonet_loss, uses_heads=False),
    **baseline_algorithms(),
})  # fmt: skip


def get_algorithm(name: str) -> Algorithm:
    from fsmtl.core.errors import FsmtlError

    if name not in ALGORITHMS:
        raise FsmtlError(f"--algorithm: expected one of {', '.join(ALGORITHMS)}, got {name!r}")
    if ALGORITHMS[name].requires is not None:
        from fsmtl.train.meta_baselines import import_l2l

        import_l2l()  # fail before any setup, with the install hint
    return ALGORITHMS[name]
