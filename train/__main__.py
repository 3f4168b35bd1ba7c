"""``fsmtl train`` / ``python -m fsmtl.train``: parse flags into a TrainConfig and train.

Every TrainConfig field is a flag spelled with dashes (``--meta-batch-size``); the seed's
underscore spellings (``--meta_batch_size``) are accepted too. ``--preset NAME`` applies a preset
first, then the other flags override it. ``--resume RUN`` continues RUN from its last checkpoint
with its stored config; only flags given explicitly change it (e.g. a larger ``--max-epochs``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from fsmtl.core.cli import CliParser
from fsmtl.core.errors import FsmtlError
from fsmtl.core.fileio import read_json
from fsmtl.train.config import TrainConfig
from fsmtl.train.presets import PRESETS, preset_overrides


def _optional(kind: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null", "") else kind(text)

    parse.__name__ = kind.__name__
    return parse


_GROUPS = {
    "run": "run", "method": "method", "tasks": "task shapes", "optimization": "optimization",
    "schedule": "epochs and budgets", "data": "data and augmentation", "speed": "device and speed",
    "logging": "logging",
}  # fmt: skip


def _choices(name: str) -> tuple[str, ...]:
    from fsmtl.models import MODEL_NAMES
    from fsmtl.train.algorithms import ALGORITHMS
    from fsmtl.train.config import FIELD_CHOICES

    extra = {"preset": tuple(PRESETS), "model": MODEL_NAMES, "algorithm": tuple(ALGORITHMS)}
    return {**FIELD_CHOICES, **extra}.get(name, ())


def build_parser() -> argparse.ArgumentParser:
    """One flag per TrainConfig field, grouped; nothing is defaulted here (the dataclass is the source)."""
    from fsmtl.train.config import FIELD_HELP

    parser = CliParser(
        prog="fsmtl train", argument_default=argparse.SUPPRESS,
        description="Train a few-shot backbone by multi-task learning (the seed's recipe by default). "
        "Defaults are the seed's; --preset NAME applies one of its published commands, then any flag overrides it. "
        "Flags are spelled with dashes; the seed's underscore spellings work too.",
    )  # fmt: skip
    groups = {key: parser.add_argument_group(title) for key, title in _GROUPS.items()}
    hints = typing.get_type_hints(TrainConfig)
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        names = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name else [])
        hint = hints[f.name]
        default = getattr(defaults, f.name)
        group_key, text = FIELD_HELP.get(f.name, ("run", ""))
        text = text.replace("{choices}", ", ".join(_choices(f.name)))
        shown = "" if f.name in ("preset", "resume", "data") else f" (default: {'none' if default is None else default})"
        group = groups[group_key]
        if hint is bool:
            group.add_argument(names[0], action=argparse.BooleanOptionalAction, help=text + shown)
            if len(names) > 1:  # the seed's spelling: a plain switch (no odd --no-x_y twin)
                group.add_argument(names[1], dest=f.name, action="store_true", default=argparse.SUPPRESS,
                                   help=argparse.SUPPRESS)  # fmt: skip
        else:
            args = typing.get_args(hint)
            kind = next((a for a in args if a is not type(None)), hint) if args else hint
            parse = _optional(kind) if type(None) in args else kind
            metavar = "NAME" if _choices(f.name) else ("RUN" if f.name == "resume" else "DIR" if f.name in ("data", "out") else kind.__name__.upper())
            group.add_argument(*names, type=parse, metavar=metavar, help=text + shown)
    return parser


# settings the checkpoint's optimizer/scheduler state embodies, or that the best validation accuracy
# so far and the epoch-counted schedule were measured with: a resume that changed them would silently
# keep the old state or compare unlike numbers, so it is refused instead
FIXED_ON_RESUME = ("optimizer", "lr", "weight_decay", "momentum", "scheduler", "plateau_factor",
                   "plateau_patience", "step_size", "step_gamma", "seed", "meta_batch_size", "train_ways",
                   "train_shots", "train_queries", "algorithm", "norm_train_features", "cosine_epochs",
                   "val_split", "test_ways", "test_shots", "test_queries", "val_epoch_length",
                   "epoch_length", "test_C", "val_within_group")  # fmt: skip


def train_config_from_args(argv: list[str]) -> TrainConfig:
    """Defaults <- preset <- flags; or, with --resume, the run's stored config <- flags."""
    given = vars(build_parser().parse_args(argv))
    if given.get("resume"):
        from fsmtl.train.checkpoint import check_run_not_in_use, checkpoint_dir, load_checkpoint, upgrade_stored_config

        run = Path(given["resume"])
        if "out" in given and Path(given["out"]).resolve() != run.resolve():
            raise FsmtlError(f"--resume {run} --out {given['out']}: a resumed run continues in its own directory; "
                             f"leave --out out (to branch a run, copy {run} first and resume the copy)")  # fmt: skip
        if os.environ.get("RANK", "0") == "0":  # before reading last.pt, which its owner may not have written yet
            check_run_not_in_use(run)
        stored, note = upgrade_stored_config(load_checkpoint(checkpoint_dir(run) / "last.pt"))
        if note and os.environ.get("RANK", "0") == "0":
            print(f"fsmtl train: --resume {run}: {note}", file=sys.stderr)
        base = TrainConfig.from_dict(stored).to_dict()
        changed = [k for k in FIXED_ON_RESUME if k in given and given[k] != base.get(k)]
        if changed:
            flags = ", ".join(f"--{k.replace('_', '-')} {base.get(k)} -> {given[k]}" for k in changed)
            raise FsmtlError(f"--resume {run}: {flags}: the optimizer and its schedule continue from the checkpoint "
                             "and cannot change mid-run; start a new run (--out) to change them")  # fmt: skip
        if "preset" in given:
            raise FsmtlError(f"--resume {run} --preset: a resumed run keeps its own settings; pass the flags "
                             "that may change (budgets, --wandb, ...) instead")  # fmt: skip
        cfg = TrainConfig(**{**base, **given, "resume": str(run), "out": str(run)})
    else:
        base = preset_overrides(given.pop("preset")) if given.get("preset") else {}
        cfg = TrainConfig(**{**base, **given})
    return check_batches_fit(cfg.check())


def check_batches_fit(cfg: TrainConfig) -> TrainConfig:
    """Refuse task shapes whose one batch (float32 images, as the backbone gets them) cannot be
    allocated on the run's device: ``--meta-batch-size 200000`` is refused now, not by the allocator
    after the data is loaded. The image shape comes from ``cfg.data``'s meta.json; without a
    readable one this check is left to the loader."""
    from fsmtl.core.device import check_fits

    try:
        shape = read_json(Path(cfg.data) / "meta.json", "shard meta.json")["image_shape"]
        pixels = math.prod(int(side) for side in shape)
    except (FsmtlError, KeyError, TypeError, ValueError):
        return cfg
    train = cfg.meta_batch_size * cfg.train_ways * (cfg.train_shots + cfg.train_queries)
    check_fits("--meta-batch-size/--train-ways/--train-shots/--train-queries",
               f"a training step's {train:,} float32 images of {'x'.join(map(str, shape))}", 4 * pixels * train, cfg.device)
    val = cfg.val_batch_tasks * cfg.test_ways * (cfg.test_shots + cfg.test_queries)
    check_fits("--val-batch-tasks/--test-ways/--test-shots/--test-queries",
               f"a validation batch's {val:,} float32 images of {'x'.join(map(str, shape))}", 4 * pixels * val, cfg.device)
    return cfg


def set_backend_flags(device_is_cuda: bool) -> dict[str, Any]:
    """Speed flags for CUDA (cudnn autotuning, TF32 for fp32 matmuls/convs); returned for the log."""
    flags = {"cudnn.benchmark": device_is_cuda, "allow_tf32": device_is_cuda}
    if device_is_cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return flags


def done_line(summary: dict[str, Any], cfg: TrainConfig) -> str:
    """The run's last line: where it is, what it reached, and an eval command that works for it."""
    best = summary.get("best_val_acc")
    validates = summary.get("validates", cfg.validation_split() is not None)
    reached = ("not validated yet" if validates else "no validation") if best is None else f"best val acc {100 * best:.2f}%"
    out = summary["out"]
    ckpts = Path(out) / "checkpoints"
    cmd = f"fsmtl eval --run {out}"
    if not (ckpts / "best.pt").is_file():
        cmd += " --checkpoint last"  # stopped inside its first epoch
    try:
        splits = json.loads((Path(cfg.data) / "meta.json").read_text())["splits"]
    except (OSError, ValueError, KeyError):
        splits = {}
    if splits and "test" not in splits and "val" in splits:
        cmd += " --split val"  # the data has no test classes
    return (f"fsmtl train: done: {out} (epoch {summary['epoch']}, step {summary['step']}, {reached}); "
            f"checkpoints in {ckpts}; evaluate with: {cmd}")  # fmt: skip


def main(argv: list[str]) -> int:
    cfg = train_config_from_args(argv)
    from fsmtl.train.run import train

    set_backend_flags(torch.cuda.is_available() and cfg.device != "cpu")  # the run's first line shows them
    summary = train(cfg)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        print(done_line(summary, cfg))
    # a run stopped by a signal checkpointed cleanly, but it did not finish: say so to the caller
    # (a job script's retry loop, fsmtl demo, bench algorithms), as a killed process would
    return {"SIGTERM": 143, "SIGINT": 130}.get(summary.get("signal") or "", 0)


if __name__ == "__main__":
    from fsmtl.core.cli import run_stage_main
    sys.exit(run_stage_main(main, sys.argv[1:]))
