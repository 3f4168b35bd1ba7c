"""The ``fsmtl`` command: one front door to every stage.

Each subcommand hands its arguments to the ``main(argv)`` of the stage that owns it, so
``fsmtl convert ...`` and ``python -m fsmtl.preprocess convert ...`` are the same program. Stages are
imported lazily: ``fsmtl verify`` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from fsmtl.core.cli import run_stage_main
from fsmtl.core.errors import EXIT_USER_ERROR

# subcommand -> (module holding main(argv), whether the subcommand name is passed on, help)
_COMMANDS: dict[str, tuple[str, bool, str]] = {
    "convert": ("fsmtl.preprocess.__main__", True, "convert a benchmark's files into checked shards"),
    "verify": ("fsmtl.preprocess.__main__", True, "re-hash a shard directory and name any file that differs"),
    "train": ("fsmtl.train.__main__", False, "train a backbone by multi-task learning (or a meta-learning baseline)"),
    "eval": ("fsmtl.eval.__main__", False, "evaluate a trained run on fixed, seeded test tasks"),
    "bench": ("fsmtl.benchmarks.__main__", False, "throughput, cost and accuracy-race benchmarks (convert, pipeline, train, eval, algorithms, race, traffic, all)"),
    "demo": ("fsmtl.demo", False, "the main job on the embedded synthetic data: convert, train, eval, report"),
    "plot": ("fsmtl.report", False, "draw the curves of runs from their metrics.jsonl, and compare runs"),
    "doctor": ("fsmtl.doctor", False, "what this machine gives fsmtl: devices, precision, optional back ends"),
}


def _usage() -> str:
    lines = ["usage: fsmtl <command> [options]", "", "commands:"]
    width = max(len(c) for c in _COMMANDS)
    for name, (_, _, text) in _COMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {text}")
    lines += ["", "Run 'fsmtl <command> --help' for a command's options."]
    return "\n".join(lines)



def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fsmtl`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(_usage(), file=sys.stderr)
        return EXIT_USER_ERROR
    if args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] in ("-V", "--version"):
        from fsmtl import __version__

        print(f"fsmtl {__version__}")
        return 0
    name = args[0]
    if name not in _COMMANDS:
        print(f"fsmtl: error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return EXIT_USER_ERROR
    module_name, keep_name, _ = _COMMANDS[name]
    module = importlib.import_module(module_name)
    rest = args if keep_name else args[1:]
    return run_stage_main(module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
