"""``run_eval(cfg)``: evaluate one run's checkpoint on every shot count and head, as a JSON document."""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from fsmtl.eval.config import EvalConfig
from fsmtl.models.heads.finetune import FinetuneConfig
from fsmtl.pipelines.augment import default_padding
from fsmtl.train.protocol import SupportViews, evaluate_backbone
from fsmtl.core.device import CLI_ARGS
from fsmtl.eval.run import Run, open_run
from fsmtl.core.errors import FsmtlError

REPORT_FORMAT = "fsmtl-eval"


def _open_split(run: Run, cfg: EvalConfig):
    from fsmtl.preprocess.shard_reader import load_split

    data = cfg.data or run.config.get("data")
    if not data:
        raise FsmtlError(f"{run.path}: the checkpoint's config names no data directory; pass --data DIR")
    if not Path(data).is_dir():
        origin = "--data" if cfg.data else run.path
        raise FsmtlError(f"{data}: data directory not found (from {origin}); pass --data DIR")
    try:
        split = load_split(data, cfg.split, verify=cfg.verify_data)
    except FsmtlError as e:
        if f"no split {cfg.split!r}" in str(e):
            from fsmtl.preprocess.shard_reader import open_shards

            other = "val" if cfg.split == "test" else "test"
            if other in open_shards(data).splits:
                raise FsmtlError(f"{e}; pass --split {other} (or --data DIR with a {cfg.split} split)") from None
            raise FsmtlError(f"{e}: no classes held out from training to test on; pass --data DIR with a test split") from None
        raise
    shape = tuple(split.images.shape[1:])
    if shape != run.image_shape:
        raise FsmtlError(f"{data}: images are {list(shape)} but the run was trained on {list(run.image_shape)}")
    return data, split


def _short_hash(path: Path) -> str:
    return hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:6]


def _run_of(ckpt: Path) -> Path:
    """The run directory of a checkpoint file: RUN for RUN/checkpoints/x.pt, else the file's folder."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def default_report_path(cfg: EvalConfig, checkpoint_path: str | Path, run_data: str | None = None) -> Path:
    """RUN/reports/eval_<split>_<checkpoint>[_from_<run>-<hash>][_on_<data>-<hash>].json.

    RUN is the --run directory (also when --run names a file in RUN/checkpoints/), else the
    checkpoint's run (RUN/checkpoints/x.pt) or folder. <checkpoint> is best, last or the file's
    stem. ``_from_<run>-<hash>`` marks a checkpoint from outside RUN/checkpoints/ and RUN (<run> the
    checkpoint's own run folder, <hash> of its path), so another run's best.pt never takes the name of RUN's own
    eval_<split>_best.json; ``_on_<data>-<hash>`` marks --data naming shards other than the run's
    own (``run_data``).
    """
    ckpt = Path(checkpoint_path)
    run_is_dir = bool(cfg.run) and Path(cfg.run).is_dir()
    base = Path(cfg.run) if run_is_dir else _run_of(ckpt)  # type: ignore[arg-type]
    tag = cfg.checkpoint if run_is_dir and cfg.checkpoint in ("best", "last") else ckpt.stem
    owner = _run_of(ckpt).resolve()
    if owner != base.resolve():  # another run's checkpoint (or a loose file): never the run's own name
        tag += f"_from_{owner.name or 'root'}-{_short_hash(ckpt)}"
    if cfg.data and Path(cfg.data).resolve() != Path(run_data or "").resolve():  # other data: its own report
        other = Path(cfg.data).resolve()
        tag += f"_on_{other.name}-{_short_hash(other)}"
    return base / "reports" / f"eval_{cfg.split}_{tag}.json"


def optimism_notes(run_config: dict[str, Any], split: str, checkpoint_file: str) -> list[str]:
    """Why an accuracy on ``split`` is not a held-out one for this run, if it is not (else []).

    ``checkpoint_file``: the evaluated file's name (best.pt is the one validation chose)."""
    notes = []
    if run_config.get("trainval") and split == "val":
        notes.append("the run trained on the val classes too (--trainval): this val accuracy is not a held-out one")
    val_split = run_config.get("val_split", "val")
    chose_on = ("test" if run_config.get("trainval") else "val") if val_split == "auto" else val_split
    if split == "test" and chose_on == "test" and checkpoint_file == "best.pt":
        notes.append("best.pt was chosen by validating on the test split (as the seed's --trainval): this test "
                     "accuracy is optimistic; evaluate --checkpoint last, or train with --val-split none")  # fmt: skip
    return notes


def support_views_for(run_config: dict[str, Any], image_shape: tuple[int, ...], views: int) -> SupportViews | None:
    """The test-time support augmentation of a run: its Lee19 crop padding (when it trained with
    lee), its affine warps and its elastic distortions, ``views`` copies (None for 0)."""
    if views <= 0:
        return None
    pad = default_padding(int(image_shape[0])) if run_config.get("augment", "lee") == "lee" else 0
    return SupportViews(views, pad, float(run_config.get("affine_degrees") or 0.0),
                        float(run_config.get("affine_scale") or 0.0), float(run_config.get("affine_shear") or 0.0),
                        float(run_config.get("elastic_px") or 0.0))


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Load the run, draw the fixed episodes, score every head for every shot count.

    Returns:
        ``{"format": "fsmtl-eval", "version": 1, "run", "checkpoint", "data", "split", "device",
        "precision", "config", "results": {"<shots>": {head: {"acc", "ci95", "n_tasks", "per_task",
        "seconds"}}}}``; accuracies in percent.
    """
    run = open_run(cfg.run, cfg.checkpoint, cfg.device, cfg.precision, CLI_ARGS)  # errors name the flags
    cfg = cfg.for_run(run.config)
    data, split = _open_split(run, cfg)
    amp = run.amp_dtype or torch.float32
    ft = FinetuneConfig(steps=cfg.finetune_steps, lr=cfg.finetune_lr)
    results: dict[str, Any] = {}
    for shots in cfg.shots:
        res = evaluate_backbone(
            run.model, split, run.mean, run.std, ways=cfg.ways, shots=shots, queries=cfg.queries,
            n_tasks=cfg.tasks, heads=list(cfg.heads), seed=cfg.seed, device=run.device, dtype=amp,
            batch_tasks=cfg.batch_tasks, head_options=cfg.head_options(), finetune=ft,
            within_group=bool(cfg.within_group), support_views=support_views_for(run.config, run.image_shape, cfg.support_views or 0),
            transforms=cfg.transforms or "none", symmetry_classes=bool(cfg.symmetry_classes),
        )  # fmt: skip
        results[str(shots)] = res
    notes = optimism_notes(run.config, cfg.split, Path(run.path).name)
    for note in notes:
        print(f"fsmtl eval: note: {note}", file=sys.stderr)
    return {
        "format": REPORT_FORMAT, "version": 1, "run": cfg.run, "checkpoint": os.path.abspath(run.path),
        "checkpoint_info": run.info, "model": run.config.get("model"), "data": str(Path(data).resolve()), "run_data": run.config.get("data"), "split": cfg.split,
        "device": str(run.device), "precision": str(run.amp_dtype or "fp32").replace("torch.", ""),
        "config": {**asdict(cfg), "shots": list(cfg.shots), "heads": list(cfg.heads)}, "results": results,
        "notes": notes,
    }  # fmt: skip


def results_table(doc: dict[str, Any]) -> str:
    """One line per (shots, head): accuracy +- 95% interval in percent."""
    c = doc["config"]
    grouped = " within one group" if c.get("within_group") else ""
    turned = c.get("transforms") not in (None, "none")
    extras = "".join([f", {c['support_views']} support views" if c.get("support_views") else "",
                      f", scores averaged over {c['transforms']}" if turned else "",
                      " (its versions of a class as classes)" if turned and c.get("symmetry_classes") else ""])
    lines = [f"{doc['split']} split, {c['ways']}-way{grouped}, {c['queries']} queries{extras}, "
             f"{c['tasks']} tasks, seed {c['seed']}  ({doc['checkpoint']})",
             f"{'shots':>5}  {'head':<16} {'accuracy %':>18}  {'tasks':>6}  {'seconds':>8}"]  # fmt: skip
    for shots, heads in doc["results"].items():
        for head, r in heads.items():
            acc = f"{r['acc']:.2f} +- {r['ci95']:.2f}"
            lines.append(f"{shots:>5}  {head:<16} {acc:>18}  {r['n_tasks']:>6}  {r['seconds']:>8.2f}")
        embed = next(iter(heads.values())).get("embed_seconds")
        if embed:
            lines.append(f"{shots:>5}  {'(embedding)':<16} {'':>18}  {'':>6}  {embed:>8.2f}")
    return "\n".join(lines)
