"""Meta-learning baselines for the cost comparison: MetaOptNet (SVM), ANIL and first-order MAML.

Each works on one step's batch laid out as the loader lays it out: T tasks x ways x
(shots + queries) images, task-major then way then image; the first ``shots`` images of each way
are its support set, the rest its queries (as ``protonet`` splits them). The loss is cross-entropy
on the queries, the accuracy is over the queries.

- ``metaoptnet``: the support set fits a Crammer-Singer multi-class SVM per task
  (``eval.heads.svm.svm_logits``: FISTA on the dual, every iteration plain tensor arithmetic, so
  the unrolled solver is differentiated); query scores are multiplied by a fixed temperature.
- ``anil``: features are computed once; a linear head (the first ``ways`` rows of the trainer's
  global head matrix, so its learnable initialisation is saved and resumed with the checkpoint)
  takes a few SGD steps on each task's support features through ``learn2learn``'s MAML
  clone/adapt, all T tasks at once (the head is expanded to [T, ways, D]).
- ``maml``: the whole network (backbone + that head) is cloned and adapted per task, first-order
  by default. It needs the model inside the step, so it is a ``step`` function, not a ``loss``.

learn2learn is an optional extra: it is imported only when ANIL/MAML run; missing, it is an
FsmtlError naming ``make l2l``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsmtl.core.errors import FsmtlError
from fsmtl.core.optional import import_optional

from fsmtl.train.shape import StepShape


@dataclass(frozen=True)
class MetaConfig:
    """Defaults of the baselines (not TrainConfig flags; see docs/algorithms.md).

    svm_C / svm_iters: the SVM's C (MetaOptNet's 0.1) and unrolled FISTA iterations at training.
    svm_scale: fixed temperature on the SVM's query scores (MetaOptNet learns one; a fixed one
        keeps the trainer's parameter set unchanged).
    anil_* / maml_*: inner-loop SGD learning rate, steps, and whether to drop second-order terms.
    """

    svm_C: float = 0.1
    svm_iters: int = 50  # FISTA from zero needs more than the interior-point solver's 15
    svm_scale: float = 5.0
    anil_inner_lr: float = 0.01
    anil_steps: int = 5
    anil_first_order: bool = False  # head-only adaptation: second order is cheap
    maml_inner_lr: float = 0.01
    maml_steps: int = 5
    maml_first_order: bool = True  # second order through the backbone is too slow on CPU


def import_l2l() -> ModuleType:
    """``learn2learn``, or an FsmtlError saying how to install it."""
    try:
        learn2learn = import_optional("learn2learn")
    except ImportError as e:
        raise FsmtlError(
            f"--algorithm anil/maml: needs learn2learn, which does not import ({e}); install with `make l2l`"
        ) from None
    return learn2learn


def split_support_query(x: Tensor, s: "StepShape") -> tuple[Tensor, Tensor]:
    """Split a batch-major tensor into per-task support and query parts.

    Args:
        x: [B, ...], B = T*ways*(shots+queries), task-major then way then image.

    Returns:
        support [T, ways*shots, ...] and query [T, ways*queries, ...], way-major within a task.
    """
    rest = x.shape[1:]
    v = x.reshape(s.n_tasks, s.ways, s.per_class, *rest)
    sup = v[:, :, : s.shots].reshape(s.n_tasks, s.ways * s.shots, *rest)
    qry = v[:, :, s.shots :].reshape(s.n_tasks, s.ways * s.queries, *rest)
    return sup, qry


def local_targets(s: "StepShape", per_way: int, device: torch.device) -> Tensor:
    """int64 [ways*per_way]: 0,0,..,1,1,.. -- the label of each image of one task, way-major."""
    return torch.arange(s.ways, device=device).repeat_interleave(per_way)


def _query_ce(logits: Tensor, s: "StepShape") -> tuple[Tensor, Tensor]:
    """logits float [T, ways*queries, ways] -> (mean CE, accuracy) over every query."""
    target = local_targets(s, s.queries, logits.device).repeat(s.n_tasks)
    flat = logits.reshape(-1, s.ways)
    return F.cross_entropy(flat, target), (flat.argmax(-1) == target).float().mean()


def _features(features: Tensor, s: "StepShape") -> Tensor:
    feats = features.float()
    return F.normalize(feats, dim=-1) if s.norm else feats


def metaoptnet_loss(
    features: Tensor, heads: Tensor, global_class: Tensor, label: Tensor, s: "StepShape",
    C: float = 0.1, iters: int = 50, scale: float = 5.0,
) -> tuple[Tensor, Tensor]:
    """MetaOptNet-SVM: per task, a Crammer-Singer SVM on the support features, CE on the queries.

    Args:
        features: float [B, D] (any float dtype; the solver runs in float32 outside autocast).
        heads, global_class, label: unused (the labels are implied by the batch layout).
        C, iters: the SVM's C and unrolled solver iterations; scale: temperature on the scores.

    Returns:
        (loss, acc) scalars; the loss is differentiable w.r.t. ``features`` through the solver.
    """
    return _query_ce(scale * svm_query_scores(features, s, C, iters), s)


def svm_query_scores(features: Tensor, s: "StepShape", C: float, iters: int) -> Tensor:
    """features float [B, D] -> the per-task SVM's query scores float32 [T, ways*queries, ways]."""
    from fsmtl.models.heads.svm import svm_logits

    sup, qry = split_support_query(_features(features, s), s)
    y = local_targets(s, s.shots, features.device).expand(s.n_tasks, -1)
    # bf16 Gram matrices would make the dual's step size and projection too coarse
    with torch.autocast(features.device.type, enabled=False):
        return svm_logits(sup, y, qry, C=C, iters=iters, ways=s.ways)


class TaskHeads(nn.Module):
    """A per-task linear head ``x [T,N,D] -> x @ w[t]^T [T,N,ways]`` holding a (non-leaf) weight.

    The weight is placed in ``_parameters`` directly, as learn2learn's own updates do, so that
    ``clone_module``/``adapt`` treat it as the parameter to adapt while gradients still reach the
    trainer's head matrix it was sliced from.
    """

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self._parameters["weight"] = weight  # [T, ways, D] or [ways, D]

    def forward(self, x: Tensor) -> Tensor:
        return x @ self._parameters["weight"].transpose(-1, -2)


def anil_loss(
    features: Tensor, heads: Tensor, global_class: Tensor, label: Tensor, s: "StepShape",
    inner_lr: float = 0.01, steps: int = 5, first_order: bool = False,
) -> tuple[Tensor, Tensor]:
    """ANIL: adapt only the linear head on each task's support features, CE on its queries.

    Args:
        features: float [B, D]; heads: float [C, D], C >= ways; rows ``[:ways]`` are the head's
            learnable initialisation (shared by every task, as in MAML). global_class, label: unused.
    """
    l2l = import_l2l()
    sup, qry = split_support_query(_features(features, s), s)
    init = heads[: s.ways].float().unsqueeze(0).expand(s.n_tasks, -1, -1)
    learner = l2l.algorithms.MAML(TaskHeads(init), lr=inner_lr, first_order=first_order).clone()
    y = local_targets(s, s.shots, features.device).repeat(s.n_tasks)
    for _ in range(steps):
        # summing each task's mean support CE gives each task's slice of the weight its own gradient
        inner = F.cross_entropy(learner(sup).reshape(-1, s.ways), y, reduction="sum") / (s.ways * s.shots)
        learner.adapt(inner)
    return _query_ce(learner(qry), s)


class HeadedNet(nn.Module):
    """Backbone + a linear head: ``x [N,C,H,W] -> logits [N, ways]``; what MAML adapts per task."""

    def __init__(self, backbone: nn.Module, head: Tensor, norm: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self._parameters["head"] = head  # [ways, D], non-leaf (see TaskHeads)
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        f = self.backbone(x).float()
        if self.norm:
            f = F.normalize(f, dim=-1)
        return f @ self._parameters["head"].float().t()


def maml_step(
    backbone: nn.Module, heads: Tensor, images: Tensor, global_class: Tensor, label: Tensor, s: "StepShape",
    inner_lr: float = 0.01, steps: int = 5, first_order: bool = True,
) -> tuple[Tensor, Tensor]:
    """MAML: per task, clone backbone + head, ``steps`` SGD steps on the support, CE on the queries.

    Args:
        backbone: the trainer's backbone (train mode; BatchNorm running statistics are shared with
            the clones, so they keep updating).
        heads: float [C, D]; rows ``[:ways]`` are the head's learnable initialisation.
        images: float [B, C, H, W] in the loader's layout.

    Returns:
        (loss, acc) averaged over the T tasks; the loss's gradient reaches ``backbone`` and ``heads``.
    """
    l2l = import_l2l()
    sup, qry = split_support_query(images, s)
    maml = l2l.algorithms.MAML(HeadedNet(backbone, heads[: s.ways], s.norm), lr=inner_lr, first_order=first_order)
    y_sup = local_targets(s, s.shots, images.device)
    y_qry = local_targets(s, s.queries, images.device)
    losses, accs = [], []
    for t in range(s.n_tasks):  # tasks one by one: each has its own adapted weights
        learner = maml.clone()
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(sup[t]), y_sup))
        logits = learner(qry[t])
        losses.append(F.cross_entropy(logits, y_qry))
        accs.append((logits.argmax(-1) == y_qry).float().mean())
    return torch.stack(losses).mean(), torch.stack(accs).mean().detach()


def needs_model(features: Tensor, heads: Tensor, global_class: Tensor, label: Tensor, s: "StepShape") -> tuple[Tensor, Tensor]:
    """MAML's ``loss`` slot: it cannot work on precomputed features (the loop calls its ``step``)."""
    raise FsmtlError("--algorithm maml: adapts the whole network, so it runs through Algorithm.step, not on features")
