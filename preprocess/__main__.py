"""``fsmtl convert`` and ``fsmtl verify`` (also ``python -m fsmtl.preprocess convert|verify ...``).

    fsmtl convert <benchmark> --src PATH --out DIR [--force] [--format npy,ffcv,dali] [flags]
    fsmtl verify <dir>

Exit codes: 0 success; 1 ``verify`` found differing files; 2 bad input (one-line error).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fsmtl.core.cli import CliParser
from fsmtl.core.errors import FsmtlError
from fsmtl.preprocess.config import (
    BENCHMARKS,
    FORMATS,
    MAX_SIZE,
    NORMALIZATIONS,
    PreprocessConfig,
)
from fsmtl.preprocess.synthetic import MIN_IMAGE_SIZE


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


_ints.__name__ = "comma-separated integers"  # argparse names the type in its error message
_floats.__name__ = "comma-separated numbers"


def _parser() -> argparse.ArgumentParser:
    d = PreprocessConfig("synthetic", Path("."))  # the defaults, from the one config dataclass
    p = CliParser(
        prog="fsmtl", description="Offline conversion of few-shot benchmarks into checked shards."
    )
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="convert a benchmark's files into shards")
    c.add_argument("benchmark", choices=BENCHMARKS)
    c.add_argument(
        "--src", type=Path, help="the downloaded files (file or folder); not for synthetic"
    )
    c.add_argument(
        "--out", type=Path, required=True, help="output directory (must not exist unless --force)"
    )
    c.add_argument("--force", action="store_true", help="overwrite an existing output directory")
    c.add_argument(
        "--format",
        default=",".join(d.formats),
        help=f"comma list of {','.join(FORMATS)} (npy is always written: ffcv means npy,ffcv)",
    )
    c.add_argument(
        "--size",
        type=int,
        default=d.size,
        help=f"output side length, {MIN_IMAGE_SIZE}..{MAX_SIZE} (default: 32 omniglot and cifar, 84 others)",
    )
    c.add_argument("--channels", type=int, default=d.channels, help=f"imagefolder/synthetic: 1 or 3 (default {d.channels})")
    c.add_argument(
        "--workers", type=int, default=d.workers, help="decoding threads (default: all CPUs)"
    )
    c.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help=f"imagefolder ratio split / synthetic generator seed (default {d.seed})",
    )
    c.add_argument(
        "--rotations",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="omniglot: add 90/180/270-degree rotations of train classes as new classes (default: on)",
    )
    c.add_argument(
        "--mirrors",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="omniglot: add the left-right mirror image of every train class as a new class (with --rotations, "
        "its rotations too: eight classes a character; default: off)",
    )
    c.add_argument(
        "--val-alphabets",
        type=int,
        default=None,
        help="omniglot: background alphabets held out as val (default 1); held-out alphabets are taken from the "
        "end of the sorted list, preferring those with at least 20 characters (20-way tasks within one alphabet)",
    )
    c.add_argument(
        "--test-alphabets",
        type=int,
        default=None,
        help="omniglot: background alphabets held out as test (default 2 without an images_evaluation set, "
        "which is otherwise the test split)",
    )
    c.add_argument(
        "--group-folders",
        action="store_true",
        help="imagefolder: the tree is <src>/<group>/<class>/<image>; each class's group is recorded, for tasks "
        "within one group (train --train-within-group/--val-within-group, eval --within-group)",
    )
    c.add_argument(
        "--split-file",
        type=Path,
        default=d.split_file,
        help="imagefolder: lines '<class>,<train|val|test>'",
    )
    c.add_argument(
        "--ratios",
        type=_floats,
        default=None,
        help=f"imagefolder: class fractions train,val,test (default {','.join(map(str, d.ratios))}; not with --split-file)",
    )
    c.add_argument(
        "--classes",
        type=_ints,
        default=d.classes,
        help=f"synthetic: classes per split train,val,test (default {','.join(map(str, d.classes))})",
    )
    c.add_argument("--per-class", type=int, default=d.per_class, help=f"synthetic: images per class (default {d.per_class})")
    c.add_argument(
        "--difficulty",
        type=float,
        default=d.difficulty,
        help=f"synthetic: nuisance variation, 0 = clean (default {d.difficulty})",
    )
    c.add_argument(
        "--normalization",
        choices=NORMALIZATIONS,
        default=d.normalization,
        help="the mean/std training and evaluation normalise with (meta.json): seed = the seed's constants "
        "(mini/tiered-ImageNet: Lee19's; CIFAR-FS/FC100: CIFAR-100's), data = the train split's statistics; "
        f"auto = seed where there are some, else data (default {d.normalization})",
    )
    c.add_argument("--no-progress", action="store_true", help="hide progress bars")
    v = sub.add_parser(
        "verify", help="re-hash a shard directory against its meta.json",
        description="Re-hash every file of a shard directory against the sha256 sums in its meta.json, "
        "print what the directory holds, and name any file that differs (exit 1).",
    )  # fmt: skip
    v.add_argument("dir", type=Path, help="shard directory written by fsmtl convert")
    return p


def convert_config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    """Build the stage's config from parsed ``convert`` arguments."""
    if args.ratios is not None and args.split_file is not None:
        raise FsmtlError("--ratios and --split-file: give one (the split file assigns every class itself)")
    defaults = PreprocessConfig("synthetic", Path("."))
    return PreprocessConfig(
        benchmark=args.benchmark,
        out=args.out,
        src=args.src,
        force=args.force,
        formats=tuple(f.strip() for f in args.format.split(",") if f.strip()),
        size=args.size,
        channels=args.channels,
        workers=args.workers,
        seed=args.seed,
        rotations=args.rotations,
        mirrors=args.mirrors,
        val_alphabets=args.val_alphabets,
        test_alphabets=args.test_alphabets,
        split_file=args.split_file,
        group_folders=args.group_folders,
        # None (not given) becomes the dataclass default, which the config reads as "not given"
        ratios=args.ratios if args.ratios is not None else defaults.ratios,  # type: ignore[arg-type]
        classes=args.classes,  # type: ignore[arg-type]
        per_class=args.per_class,
        difficulty=args.difficulty,
        normalization=args.normalization,
        progress=not args.no_progress,
    )


def _verify(root: Path) -> int:
    from fsmtl.preprocess.shard_reader import open_shards
    from fsmtl.preprocess.shard_verify import verify_shards

    problems = verify_shards(root)
    if problems:
        for line in problems:
            print(line)
        print(f"{root}: {len(problems)} file(s) differ from meta.json")
        return 1
    from fsmtl.preprocess.run import describe_shards

    meta = open_shards(root).meta
    print(f"{root}: {describe_shards(meta)}")
    print(f"{root}: all {len(meta['files'])} files match meta.json")
    return 0


def main(argv: list[str]) -> int:
    """Run ``convert`` or ``verify``; returns the exit code (FsmtlError propagates to the CLI)."""
    try:
        parser = _parser()
        args, extra = parser.parse_known_args(argv)
        if extra:  # name the subcommand's help, not the top-level one
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # argparse already printed its message
        return int(e.code or 0) if e.code in (0, None) else 2
    if args.command == "verify":
        return _verify(args.dir)
    from fsmtl.preprocess.run import convert, format_summary

    try:
        cfg = convert_config_from_args(args)
    except (TypeError, ValueError) as e:
        raise FsmtlError(f"convert: bad option ({e})") from None
    print(format_summary(convert(cfg)))
    return 0


if __name__ == "__main__":
    from fsmtl.core.cli import run_stage_main
    sys.exit(run_stage_main(main, sys.argv[1:]))
