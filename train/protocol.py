"""The evaluation protocol: fixed seeded episodes, one embedding pass per batch of tasks, every head.

The episodes depend only on (split, seed, ways, shots + queries, n_tasks): never on the head, the
checkpoint or the batch size, so every method and every run is scored on the same tasks.
Accuracies are percentages; the 95% interval is 1.96 * std / sqrt(n_tasks) (std with ddof=1).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from fsmtl.models.heads import HEAD_NAMES, adapt_scores, check_options
from fsmtl.models.heads.finetune import FinetuneConfig, finetune_predict
from fsmtl.core.checks import is_int
from fsmtl.core.device import PYTHON_ARGS, resolve_device
from fsmtl.core.errors import FsmtlError
from fsmtl.pipelines.augment import augment_rows, draw_affine, draw_elastic, draw_lee_params, warp_batch
from fsmtl.pipelines.episodes import class_groups, sample_episode_indices
from fsmtl.pipelines.transforms import TEST_TRANSFORMS, dihedral, normalize_batch

@dataclass(frozen=True)
class SupportViews:
    """Test-time augmentation of the support set: each support image is also embedded in ``views``
    augmented copies (a random crop with ``pad`` pixels of zero padding, a random affine warp
    within ``degrees``/``scale``/``shear`` and an elastic one of ``elastic_px`` as in training),
    and the feature heads are fitted on
    the originals and the copies together; queries are embedded as they are. The copies are drawn
    from their own generator seeded by the episode seed, so every head and checkpoint sees the
    same ones."""

    views: int = 0
    pad: int = 0
    degrees: float = 0.0
    scale: float = 0.0
    shear: float = 0.0
    elastic_px: float = 0.0


EMBED_CHUNK = 512  # images per forward pass: bounds activation memory whatever batch_tasks is
AMP_DTYPES = (None, torch.float32, torch.float16, torch.bfloat16)  # float32 and None: no autocast


def summarize(per_task: Tensor) -> dict[str, Any]:
    """Mean accuracy and 95% interval, in percent, from per-task accuracies float [T] in [0, 1]."""
    acc = per_task.double().cpu() * 100.0
    n = acc.numel()
    ci = 1.96 * float(acc.std(unbiased=True)) / math.sqrt(n) if n > 1 else 0.0
    return {"acc": float(acc.mean()), "ci95": ci, "n_tasks": n, "per_task": acc.tolist()}


def episode_rows(
    split: Any, ways: int, shots: int, queries: int, n_tasks: int, seed: int, within_group: bool = False
) -> Tensor:
    """Row indices int64 [n_tasks, ways, shots + queries] of the fixed episodes (CPU generator).

    ``within_group``: every task's classes from one group of the split (``split.categories``: an
    Omniglot alphabet, a tiered-ImageNet category), drawn uniformly among the groups that have
    ``ways`` classes.
    """
    offsets = torch.from_numpy(np.asarray(split.class_offsets, dtype=np.int64))
    g = torch.Generator().manual_seed(int(seed))
    try:
        groups = class_groups(getattr(split, "categories", None), f"split {getattr(split, 'name', '?')}") if within_group else None
        rows, _ = sample_episode_indices(offsets, n_tasks, ways, shots + queries, g, groups)
    except ValueError as e:
        raise FsmtlError(f"split {getattr(split, 'name', '?')}: {e}" if not str(e).startswith("split ") else str(e)) from e
    return rows


@torch.no_grad()
def embed_images(
    model: nn.Module, images: Tensor, mean: Sequence[float], std: Sequence[float], amp_dtype: torch.dtype | None
) -> Tensor:
    """Features float32 [N, D] of uint8 images [N, H, W, C] (on the model's device), eval mode assumed."""
    out = []
    for chunk in images.split(EMBED_CHUNK):
        x = normalize_batch(chunk, mean, std)
        with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out.append(model(x).float())
    return torch.cat(out)


@torch.no_grad()
def embed_support_views(
    model: nn.Module, support: Tensor, mean: Sequence[float], std: Sequence[float], amp_dtype: torch.dtype | None,
    sv: SupportViews, generator: torch.Generator,
) -> Tensor:
    """Features float32 [views, N, D] of ``sv.views`` augmented copies of uint8 support images
    [N, H, W, C] (on the model's device); the draws come from ``generator`` (CPU)."""
    n = support.shape[0]
    rows = torch.arange(n, device=support.device).repeat(sv.views)
    params = draw_lee_params(n * sv.views, generator, sv.pad, jitter=False, flip=False).to(support.device)
    warp = draw_affine(n * sv.views, generator, sv.degrees, sv.scale, sv.shear)
    elastic = draw_elastic(n * sv.views, generator, sv.elastic_px) if sv.elastic_px else None
    out = []
    for lo in range(0, n * sv.views, EMBED_CHUNK):
        sl = slice(lo, lo + EMBED_CHUNK)
        part = type(params)(params.top[sl], params.left[sl], params.flip[sl], None, None, params.pad)
        x = warp_batch(augment_rows(support, rows[sl], part, mean, std, check=False), warp[sl],
                       None if elastic is None else elastic[sl])
        with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out.append(model(x).float())
    return torch.cat(out).reshape(sv.views, n, -1)


def gather_images(split: Any, rows: Tensor, device: torch.device) -> Tensor:
    """uint8 [*rows.shape, H, W, C] on ``device`` (one copy from the memory-mapped split)."""
    flat = rows.reshape(-1).numpy()
    x = torch.from_numpy(np.ascontiguousarray(split.images[flat]))
    return x.to(device, non_blocking=True).reshape(*rows.shape, *x.shape[1:])


def feature_scores(
    features: Tensor, shots: int, heads: Sequence[str], head_options: dict[str, dict[str, Any]] | None = None,
    support_views: Tensor | None = None, *, who: str = "feature_scores",
) -> dict[str, Tensor]:
    """Each feature head's query scores float [T, ways * queries, ways] (queries way-major: the
    query of way w comes at rows w * queries ... (w + 1) * queries - 1).

    Args: as :func:`evaluate_features`; ``who`` begins the input checks' messages (the public caller).
    """
    if not isinstance(features, Tensor) or features.ndim != 4 or not features.dtype.is_floating_point:
        found = f"{features.dtype} {list(features.shape)}" if isinstance(features, Tensor) else type(features).__name__
        raise FsmtlError(f"{who}: features must be float [T, ways, shots + queries, D], got {found}")
    per = features.shape[2]
    if not is_int(shots) or not 1 <= shots < per:
        raise FsmtlError(f"{who}: shots must be an integer in 1..{per - 1} (features have {per} "
                         f"images a way: shots + queries), got {shots!r}")  # fmt: skip
    heads = _check_heads(heads, feature_only=True)
    _check_head_options(heads, head_options)
    t, ways, per, d = features.shape
    queries = per - shots
    sup = features[:, :, :shots]
    if support_views is not None:  # [views, T, ways, shots, D] -> more support images a way
        sup = torch.cat([sup, support_views.permute(1, 2, 0, 3, 4).reshape(t, ways, -1, d)], dim=2)
    n_sup = sup.shape[2]
    support = sup.reshape(t, ways * n_sup, d)
    query = features[:, :, shots:].reshape(t, ways * queries, d)
    labels = torch.arange(ways, device=features.device).repeat_interleave(n_sup).expand(t, -1)
    opts = head_options or {}
    return {h: adapt_scores(support, labels, query, head=h, ways=ways, **opts.get(h, {})) for h in heads}


def scores_accuracy(scores: Tensor) -> Tensor:
    """Per-task accuracy float64 [T] in [0, 1] of scores float [T, ways * queries, ways] whose
    queries are way-major (as :func:`feature_scores` returns them)."""
    t, q, ways = scores.shape
    target = torch.arange(ways, device=scores.device).repeat_interleave(q // ways)
    return (scores.argmax(-1) == target).double().mean(1)


def symmetry_class_scores(
    features: Sequence[Tensor], shots: int, head: str, head_options: dict[str, dict[str, Any]] | None = None,
    support_views: Sequence[Tensor | None] | None = None,
) -> Tensor:
    """Scores float [T, ways * queries, ways] of one task batch seen under K symmetries, each
    symmetry's version of a class a class of its own (as a converter's rotated classes are in training).

    One fit per task on K * ways classes (class w under symmetry k is class k * ways + w), on the
    support images of all versions; the queries of version k are scored against the classes of
    version k only, and those scores are summed over k.

    Args:
        features: K tensors float [T, ways, shots + queries, D], the task batch under each symmetry.
        support_views: None, or K tensors float [V, T, ways, shots, D] (or K Nones).
        head, head_options: one feature head and its options (as :func:`feature_scores`).
    """
    k = len(features)
    t, ways, per, _ = features[0].shape
    views = None
    if support_views is not None and support_views[0] is not None:
        views = torch.cat(list(support_views), 2)  # [V, T, K * ways, shots, D]
    scores = feature_scores(torch.cat(list(features), 1), shots, [head], head_options, views,
                            who="symmetry_class_scores")[head].float()
    blocks = scores.reshape(t, k, ways * (per - shots), k, ways)
    return blocks.diagonal(dim1=1, dim2=3).sum(-1)  # [T, ways * queries, ways, K] -> summed over K


def evaluate_features(
    features: Tensor, shots: int, heads: Sequence[str], head_options: dict[str, dict[str, Any]] | None = None,
    support_views: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per-task accuracy float [T] in [0, 1] of each feature head.

    Args:
        features: float [T, ways, shots + queries, D]; the first ``shots`` of each way are support.
        support_views: optional float [V, T, ways, shots, D]: features of augmented copies of the
            support images, fitted on with them (:class:`SupportViews`).
        heads: feature-head names (see ``eval.heads.feature_heads``).
        head_options: per-head options, e.g. ``{"logreg": {"C": 3.0}}``; a key must be one of ``heads``.

    Raises:
        FsmtlError: features not float [T, ways, per, D] with ways >= 2 and 1 <= shots < per,
            an unknown head, or options for a head not in ``heads``.
    """
    scores = feature_scores(features, shots, heads, head_options, support_views, who="evaluate_features")
    return {h: scores_accuracy(s) for h, s in scores.items()}


def _finetune_batch(
    model: nn.Module, images: Tensor, shots: int, mean, std, amp_dtype, cfg: FinetuneConfig
) -> Tensor:
    """Per-task accuracy [t] of the tune-all head; images uint8 [t, ways, per, H, W, C]."""
    t, ways, per = images.shape[:3]
    accs = []
    for task in images:
        flat = normalize_batch(task.reshape(ways * per, *task.shape[2:]), mean, std)  # [ways*per, C, H, W]
        x = flat.reshape(ways, per, *flat.shape[1:])
        s = x[:, :shots].reshape(ways * shots, *x.shape[2:])
        q = x[:, shots:].reshape(ways * (per - shots), *x.shape[2:])
        y = torch.arange(ways, device=x.device).repeat_interleave(shots)
        pred = finetune_predict(model, s, y, q, ways, cfg, amp_dtype)
        accs.append((pred == torch.arange(ways, device=x.device).repeat_interleave(per - shots)).double().mean())
    return torch.stack(accs)


def evaluate_backbone(
    model: nn.Module,
    split: Any,
    mean: Sequence[float],
    std: Sequence[float],
    ways: int = 5,
    shots: int = 5,
    queries: int = 15,
    n_tasks: int = 2000,
    heads: Sequence[str] = ("logreg",),
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = torch.float32,
    batch_tasks: int = 100,
    head_options: dict[str, dict[str, Any]] | None = None,
    finetune: FinetuneConfig | None = None,
    within_group: bool = False,
    support_views: SupportViews | None = None,
    transforms: str = "none",
    symmetry_classes: bool = False,
) -> dict[str, dict[str, Any]]:
    """Score a frozen backbone on ``n_tasks`` fixed episodes with each head.

    Args:
        model: backbone float [B,C,H,W] -> [B,D] on ``device``; put in eval mode here, mode restored after.
        split: a ``preprocess.shards.SplitData`` (images uint8 [N,H,W,C], class_offsets).
        mean, std: the run's per-channel normalisation (0..1 scale).
        ways, shots, queries, n_tasks: the episode shape; ``seed`` fixes the episodes.
        heads: names from ``eval.heads.HEAD_NAMES`` ("finetune" tunes the model per task and restores its weights).
        ways, shots, queries, n_tasks: integers, ways >= 2 and the others >= 1.
        device: "cpu", "cuda", "cuda:N" or "auto"; CUDA must be available for "cuda".
        dtype: autocast dtype of the forward pass: None or torch.float32 (none), torch.bfloat16
            (for a bf16-trained run) or torch.float16.
        batch_tasks: tasks whose images are embedded together (unique images once per batch), >= 1.
        head_options: per-head options, e.g. ``{"logreg": {"C": 3.0}}``; every key must be one of
            ``heads`` (not "finetune": its settings are ``finetune``).
        finetune: the settings of the "finetune" head (default ``FinetuneConfig()``).
        within_group: every task's classes from one group of the split (:func:`episode_rows`).
        support_views: test-time augmentation of the support set for the feature heads (None or
            ``views`` 0: none).
        transforms: a name of ``pipelines.transforms.TEST_TRANSFORMS``: every task is also scored
            with all its images (support, views and queries alike) under each symmetry of the set,
            and the feature heads' scores are averaged over them (logreg: its logits, so the
            geometric mean of the probabilities); "none" scores the images as they are. The
            finetune head ignores it.
        symmetry_classes: with ``transforms``, fit each task's heads once, on all versions of its
            support set with every version of a class a class of its own
            (:func:`symmetry_class_scores`), instead of once per version.

    Returns:
        ``{head: {"acc": float percent, "ci95": float percent, "n_tasks": int,
        "per_task": list[float] percent, "seconds": the head's own time (fit + predict; finetune: its
        tuning incl. its forward passes), "embed_seconds": the shared frozen-backbone embedding time}}``.

    Raises:
        FsmtlError: any argument out of range (checked before any image is embedded), or a split
            with fewer than ``ways`` classes or ``shots + queries`` images a class.
    """
    device, amp = _check_backbone_args(model, split, mean, std, ways, shots, queries, n_tasks, seed, device, dtype,
                                       batch_tasks, finetune)  # fmt: skip
    heads = _check_heads(heads)
    _check_head_options(heads, head_options)
    symmetries = _check_transforms(transforms, split)
    if not isinstance(symmetry_classes, bool):
        raise FsmtlError(f"symmetry_classes: expected True or False, got {symmetry_classes!r}")
    rows = episode_rows(split, ways, shots, queries, n_tasks, seed, within_group)
    sv = support_views if support_views is not None and support_views.views > 0 else None
    view_gen = torch.Generator().manual_seed(int(seed) + 104729)  # its own stream: the episodes stay the same
    feature_heads = [h for h in heads if h != "finetune"]
    per_task: dict[str, list[Tensor]] = {h: [] for h in heads}
    seconds = dict.fromkeys(heads, 0.0)
    embed_s = 0.0
    was_training = model.training
    model.eval()
    try:
        for chunk in rows.split(int(batch_tasks)):
            te = time.perf_counter()  # embedding time: gathering the images counts too
            uniq, inverse = torch.unique(chunk, return_inverse=True)  # each image embedded once
            images = gather_images(split, uniq, device)
            if feature_heads:
                seen_feats: list[Tensor] = []  # the chunk's tasks under each symmetry
                seen_views: list[Tensor | None] = []
                task_rows = inverse.to(device)
                support_rows = task_rows[:, :, :shots].reshape(-1)  # in task/way/shot order
                for turns, mirror in symmetries:
                    seen = dihedral(images, turns, mirror)
                    seen_feats.append(embed_images(model, seen, mean, std, amp)[task_rows])
                    views = None
                    if sv is not None:  # the support images of the chunk's tasks
                        sup = seen[support_rows]
                        views = embed_support_views(model, sup, mean, std, amp, sv, view_gen)
                        views = views.reshape(sv.views, *chunk.shape[:2], shots, -1)
                    seen_views.append(views)
                _sync(device)
                embed_s += time.perf_counter() - te
                for h in feature_heads:  # one head at a time, so that each is timed on its own
                    t0 = time.perf_counter()
                    opts = {h: head_options[h]} if head_options and h in head_options else None
                    if symmetry_classes:
                        scores = symmetry_class_scores(seen_feats, shots, h, opts, seen_views)
                    else:  # each version of the task fitted on its own, the scores summed
                        scores = sum(feature_scores(f, shots, [h], opts, v)[h].float()
                                     for f, v in zip(seen_feats, seen_views))  # fmt: skip
                    per_task[h].append(scores_accuracy(scores).cpu())
                    seconds[h] += time.perf_counter() - t0
            if "finetune" in heads:
                t0 = time.perf_counter()
                task_images = images[inverse.to(device)]
                ft = finetune or FinetuneConfig()
                per_task["finetune"].append(_finetune_batch(model, task_images, shots, mean, std, amp, ft).cpu())
                seconds["finetune"] += time.perf_counter() - t0
    finally:
        model.train(was_training)
    return {h: {**summarize(torch.cat(v)), "seconds": seconds[h], "embed_seconds": embed_s} for h, v in per_task.items()}


def _check_backbone_args(
    model: Any, split: Any, mean: Any, std: Any, ways: Any, shots: Any, queries: Any, n_tasks: Any, seed: Any,
    device: Any, dtype: Any, batch_tasks: Any, finetune: Any,
) -> tuple[torch.device, torch.dtype | None]:
    """The checks of :func:`evaluate_backbone`, all cheap; returns (device, autocast dtype or None)."""
    if not isinstance(model, nn.Module):
        raise FsmtlError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not (hasattr(split, "images") and hasattr(split, "class_offsets")):
        raise FsmtlError(f"split: expected a preprocess.shards.SplitData (images, class_offsets), got {type(split).__name__}")
    for name, value, least in (("ways", ways, 2), ("shots", shots, 1), ("queries", queries, 1),
                               ("n_tasks", n_tasks, 1), ("batch_tasks", batch_tasks, 1)):  # fmt: skip
        if not is_int(value) or value < least:
            raise FsmtlError(f"{name}: expected an integer >= {least}, got {value!r}")
    if not is_int(seed):
        raise FsmtlError(f"seed: expected an integer, got {seed!r}")
    channels = split.images.shape[-1]
    for name, values in (("mean", mean), ("std", std)):
        try:
            vals = [float(v) for v in values]
        except (TypeError, ValueError):
            raise FsmtlError(f"{name}: expected {channels} numbers (one per channel), got {values!r}") from None
        ok = all(math.isfinite(v) for v in vals) and (name == "mean" or all(v > 0 for v in vals))
        if len(vals) != channels or not ok:
            what = "finite numbers" if name == "mean" else "finite numbers > 0"
            raise FsmtlError(f"{name}: expected {channels} {what} (one per channel of the split), got {values!r}")
    if not any(dtype is d for d in AMP_DTYPES):
        raise FsmtlError(f"dtype: expected None, torch.float32, torch.float16 or torch.bfloat16, got {dtype!r}")
    if finetune is not None and not isinstance(finetune, FinetuneConfig):
        raise FsmtlError(f"finetune: expected an eval.heads.finetune.FinetuneConfig, got {type(finetune).__name__}")
    dev = resolve_device(device, PYTHON_ARGS)
    return dev, (None if dtype in (None, torch.float32) else dtype)


def _check_transforms(transforms: Any, split: Any) -> tuple[tuple[int, bool], ...]:
    """The (quarter turns, mirror) pairs of a ``TEST_TRANSFORMS`` name; quarter turns need square images."""
    if transforms not in TEST_TRANSFORMS:
        raise FsmtlError(f"transforms: expected one of {', '.join(TEST_TRANSFORMS)}, got {transforms!r}")
    symmetries = TEST_TRANSFORMS[transforms]
    h, w = (int(v) for v in split.images.shape[1:3])
    if h != w and any(turns % 2 for turns, _ in symmetries):
        raise FsmtlError(f"transforms {transforms}: quarter turns need square images, split "
                         f"{getattr(split, 'name', '?')} holds {h}x{w}")  # fmt: skip
    return symmetries


def _check_heads(heads: Any, feature_only: bool = False) -> list[str]:
    names = [h for h in HEAD_NAMES if not (feature_only and h == "finetune")]
    if isinstance(heads, str) or not isinstance(heads, Sequence):
        raise FsmtlError(f"heads: expected a list of head names such as ['logreg'], got {heads!r}")
    if not heads or any(not isinstance(h, str) or h not in names for h in heads):
        raise FsmtlError(f"heads: expected some of {', '.join(names)}, got {list(heads)}")
    return list(heads)


def _check_head_options(heads: list[str], head_options: Any) -> None:
    """Options must name requested feature heads (a typo would otherwise be silently ignored)."""
    if head_options is None:
        return
    if not isinstance(head_options, dict):
        raise FsmtlError(f"head_options: expected a dict of head name -> options dict, got {type(head_options).__name__}")
    stray = [h for h in head_options if h not in heads or h == "finetune"]
    if stray:
        hint = " (the finetune head's settings are finetune=FinetuneConfig(...))" if "finetune" in stray else ""
        raise FsmtlError(f"head_options: options for {stray}, which are not among the feature heads requested "
                         f"{[h for h in heads if h != 'finetune']}{hint}")  # fmt: skip
    for h, opts in head_options.items():
        if not isinstance(opts, dict):
            raise FsmtlError(f"head_options[{h!r}]: expected a dict of options such as {{'C': 3.0}}, got {opts!r}")
        check_options(h, opts)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
