"""``fsmtl eval``: score a trained run on fixed, seeded few-shot tasks; a table on screen, JSON to file."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fsmtl.eval.config import EvalConfig
from fsmtl.models.heads import HEAD_NAMES
from fsmtl.core.cli import CliParser, plain_doc
from fsmtl.core.fileio import atomic_write_json
from fsmtl.pipelines.transforms import TEST_TRANSFORMS


def _parser() -> argparse.ArgumentParser:
    # every default is None: EvalConfig holds the real defaults, in one place
    d = EvalConfig()
    p = CliParser(prog="fsmtl eval", description=plain_doc(__doc__), argument_default=None)
    p.add_argument("--run", help="run directory written by fsmtl train (or a checkpoint file)")
    p.add_argument("--checkpoint", help="best (default), last, or a path to a .pt file; leave it out when --run is a checkpoint file")
    p.add_argument("--split", choices=["test", "val"], help="classes to test on (default: test)")
    p.add_argument("--data", help="shard directory (default: the one the run was trained on)")
    p.add_argument("--ways", type=int, help="classes per task (default: the run's --test-ways, the seed's 5)")
    p.add_argument("--shots", type=int, nargs="+", help=f"shot counts (default: {' '.join(map(str, d.shots))})")
    p.add_argument("--queries", type=int, help="query images per class (default: the run's --test-queries, the seed's 30)")
    p.add_argument("--tasks", type=int, help=f"test tasks per shot count (default {d.tasks})")
    p.add_argument("--head", dest="heads", nargs="+", choices=HEAD_NAMES, help="heads (default: logreg)")
    p.add_argument("--C", dest="C", type=float, help="logistic regression C (default: the run's --test-C, else 3, the seed's)")
    p.add_argument("--svm-C", dest="svm_C", type=float, help=f"svm head C (default {d.svm_C}, MetaOptNet's)")
    p.add_argument("--ridge-lam", dest="ridge_lam", type=float, help=f"ridge head L2 strength (default {d.ridge_lam})")
    p.add_argument("--finetune-steps", dest="finetune_steps", type=int, help=f"finetune head: Adam steps on the support set (default {d.finetune_steps}, the seed's tune-all)")
    p.add_argument("--finetune-lr", dest="finetune_lr", type=float, help=f"finetune head: learning rate (default {d.finetune_lr})")
    p.add_argument("--seed", type=int, help=f"episode seed: the same tasks for every head and checkpoint (default {d.seed})")
    p.add_argument("--within-group", dest="within_group", action=argparse.BooleanOptionalAction, default=None,
                   help="every task's classes from one group of the split (an Omniglot alphabet: the within-alphabet "
                        "protocol; a tiered-ImageNet category); default: as the run validated (--val-within-group)")
    p.add_argument("--support-views", dest="support_views", type=int,
                   help="test-time augmentation: also fit the feature heads on this many augmented copies of each "
                        "support image (the run's crop padding, affine warps and elastic distortions; default: the run's --test-support-views)")
    p.add_argument("--transforms", choices=list(TEST_TRANSFORMS),
                   help="test-time symmetries: also score every task with all its images rotated (rot4: the four "
                        "quarter turns; d4: and mirrored; flip: mirrored) and average the heads' scores; none: the "
                        "images as they are (default: the run's --test-transforms)")
    p.add_argument("--symmetry-classes", dest="symmetry_classes", action=argparse.BooleanOptionalAction, default=None,
                   help="with --transforms: fit each task once on all versions of its support set, every version of a "
                        "class a class of its own, and score each version's queries against its own classes "
                        "(default: the run's --test-symmetry-classes)")
    p.add_argument("--batch-tasks", dest="batch_tasks", type=int, help=f"tasks embedded and solved per batch (default {d.batch_tasks})")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], help="default: the run's")
    p.add_argument("--json", help="report file (default RUN/reports/eval_<split>_<checkpoint>.json; a checkpoint "
                   "from outside RUN/checkpoints/ adds _from_<its run>-<hash>, --data other than the run's _on_<data>-<hash>)")
    p.add_argument("--no-verify-data", dest="verify_data", action="store_false", default=None,
                   help="skip comparing the split's files with meta.json's sha256 (cached by size and mtime: only "
                        "the first use after a change hashes)")
    return p


def parse_config(argv: list[str]) -> EvalConfig:
    ns = vars(_parser().parse_args(argv))
    for key in ("shots", "heads"):
        if ns.get(key) is not None:
            ns[key] = tuple(ns[key])
    return EvalConfig(**{k: v for k, v in ns.items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    from fsmtl.eval.evaluate import default_report_path, results_table, run_eval

    cfg = parse_config(list(sys.argv[1:] if argv is None else argv))
    if cfg.json:  # a report path that cannot be written fails now, not after the evaluation
        _check_writable(Path(cfg.json))
    doc = run_eval(cfg)
    out = Path(cfg.json) if cfg.json else default_report_path(cfg, doc["checkpoint"], doc.get("run_data"))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, doc)  # before printing: a closed stdout (`| head`) cannot lose the report
    print(results_table(doc))
    print(f"wrote {out}")
    return 0


def _check_writable(path: Path) -> None:
    from fsmtl.core.errors import FsmtlError

    if path.is_dir():
        raise FsmtlError(f"--json {path}: is a directory (expected a file path for the report)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FsmtlError(f"--json {path}: its folder cannot be created ({e.strerror})") from None
    if not os.access(path.parent, os.W_OK):
        raise FsmtlError(f"--json {path}: its folder is not writable")


if __name__ == "__main__":
    from fsmtl.core.cli import run_stage_main
    sys.exit(run_stage_main(main, sys.argv[1:]))
