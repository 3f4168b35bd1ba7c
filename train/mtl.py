"""The seed's multi-task learning objective, as pure tensor functions.

One global head matrix W [n_classes, D]; a task's head is W's rows for its classes (in the task's
way order); the loss is cross-entropy within each task, averaged over the T tasks of a step. All
images of a task (shots + queries) are training data: no support/query split.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def init_heads(n_classes: int, dim: int, train_ways: int, generator: torch.Generator) -> Tensor:
    """The seed's head initialisation: Kaiming-uniform (a=sqrt(5)) scaled by sqrt(n_classes/ways).

    Kaiming-uniform with a=sqrt(5) on a [n_classes, D] matrix is U(-1/sqrt(D), 1/sqrt(D)) (nn.Linear's
    default); the scale keeps each task's logits as large as a ``ways``-class head's would be.

    Returns:
        float32 [n_classes, D] on the CPU (move it with the model).
    """
    bound = 1.0 / math.sqrt(dim)  # gain sqrt(2/(1+a^2)) = sqrt(1/3); bound = gain*sqrt(3/fan_in)
    w = (torch.rand(n_classes, dim, generator=generator) * 2.0 - 1.0) * bound
    return w * math.sqrt(n_classes / train_ways)


def task_logits(features: Tensor, heads: Tensor, classes: Tensor) -> Tensor:
    """Per-task logits in one batched matmul.

    Args:
        features: float [T, N, D], the N images of each task.
        heads: float [C, D], the global head matrix.
        classes: int64 [T, ways], the global class of each way of each task.

    Returns:
        float [T, N, ways]: ``features[t] @ heads[classes[t]].T``.
    """
    task_heads = heads[classes]  # [T, ways, D]
    # float32 logits also under bf16/fp16 autocast (bmm would run in low precision): they are few
    # (T x N x ways), and the cross-entropy compares them closely
    with torch.autocast(features.device.type, enabled=False):
        return torch.bmm(features.float(), task_heads.transpose(1, 2).float())


def task_classes(global_class: Tensor, n_tasks: int, ways: int) -> Tensor:
    """The global class of each way, read from a task-major, way-major batch.

    Args:
        global_class: int64 [T*ways*per_class], grouped task, then way, then image.

    Returns:
        int64 [T, ways].
    """
    return global_class.view(n_tasks, ways, -1)[:, :, 0]


def mtl_loss(
    features: Tensor, heads: Tensor, global_class: Tensor, label: Tensor, n_tasks: int, ways: int, norm: bool
) -> tuple[Tensor, Tensor]:
    """The MTL loss of one step and its accuracy.

    Args:
        features: float [B, D], B = T*ways*per_class, grouped task-major then way then image.
        heads: float [C, D].
        global_class: int64 [B], the split-level class of each image.
        label: int64 [B] in [0, ways), the within-task label (== way index).
        n_tasks: T.
        ways: classes per task.
        norm: L2-normalise the features first (the seed's ``norm_train_features``).

    Returns:
        (loss, acc): float32 scalars; loss is the mean over tasks of each task's mean cross-entropy
        (every task has the same number of images, so it equals the mean over images).
    """
    feats = features.float()
    if norm:
        feats = F.normalize(feats, dim=-1)
    feats = feats.view(n_tasks, -1, feats.shape[-1])  # [T, N, D]
    logits = task_logits(feats, heads.float(), task_classes(global_class, n_tasks, ways))
    flat = logits.reshape(-1, ways)
    loss = F.cross_entropy(flat, label)
    acc = (flat.argmax(-1) == label).float().mean()
    return loss, acc
