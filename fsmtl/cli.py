"""The ``fsmtl`` command: one front door to every stage.

Each subcommand hands its arguments to the ``main(argv)`` of the stage that owns it, so
``fsmtl convert ...`` and ``python -m fsmtl.preprocess convert ...`` are the same program. Stages are
imported lazily: ``fsmtl verify`` does not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sys
import threading
from typing import Callable, NoReturn, Sequence

from fsmtl.errors import EXIT_USER_ERROR, FsmtlError

# subcommand -> (module holding main(argv), whether the subcommand name is passed on, help)
_COMMANDS: dict[str, tuple[str, bool, str]] = {
    "convert": ("fsmtl.preprocess.__main__", True, "convert a benchmark's files into checked shards"),
    "verify": ("fsmtl.preprocess.__main__", True, "re-hash a shard directory and name any file that differs"),
    "train": ("fsmtl.train.__main__", False, "train a backbone by multi-task learning (or a meta-learning baseline)"),
    "eval": ("fsmtl.eval.__main__", False, "evaluate a trained run on fixed, seeded test tasks"),
    "bench": ("fsmtl.benchmarks.__main__", False, "throughput and cost benchmarks (convert, pipeline, train, eval, algorithms, traffic, all)"),
    "demo": ("fsmtl.demo", False, "the main job on the embedded synthetic data: convert, train, eval, report"),
    "plot": ("fsmtl.report", False, "draw the curves of runs from their metrics.jsonl, and compare runs"),
    "doctor": ("fsmtl.doctor", False, "what this machine gives fsmtl: devices, precision, optional back ends"),
}


_REST_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|ref|doc):`~?([^`]+)`")


class CliParser(argparse.ArgumentParser):
    """argparse with a one-line usage error: ``PROG: error: MESSAGE (see PROG --help)``, exit 2,
    instead of the whole usage block before it (``--help`` still shows everything)."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def plain_doc(text: str | None) -> str:
    """A docstring as plain text for ``--help``: reST roles (``:func:`a.b```) and double backticks
    (````fsmtl plot````) dropped, the names kept. Used wherever a docstring becomes an argparse
    description."""
    return re.sub(r"``(.+?)``", r"\1", _REST_ROLE.sub(r"\1", text or ""), flags=re.DOTALL)


def _usage() -> str:
    lines = ["usage: fsmtl <command> [options]", "", "commands:"]
    width = max(len(c) for c in _COMMANDS)
    for name, (_, _, text) in _COMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {text}")
    lines += ["", "Run 'fsmtl <command> --help' for a command's options."]
    return "\n".join(lines)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` and ``with`` cleans up (no half-written output)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def run_stage_main(main: Callable[[list[str]], int | None], argv: Sequence[str]) -> int:
    """Run a stage's ``main`` and map user errors to a one-line message and exit code 2.

    SIGTERM ends the stage like Ctrl-C (exit 143, temporary output removed); ``fsmtl train`` turns
    it into a graceful mid-epoch checkpoint instead (see train/signals.py)."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _run(main, argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(main: Callable[[list[str]], int | None], argv: Sequence[str]) -> int:
    try:
        rc = main(list(argv))
    except FsmtlError as e:
        print(f"fsmtl: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Terminated:
        print("fsmtl: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("fsmtl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fsmtl ... | head`: the reader left; stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush cannot fail again
        return 141
    except OSError as e:  # a path that cannot be written or read: the user's to fix, not a traceback
        if os.environ.get("FSMTL_DEBUG"):
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"fsmtl: error: {where}{e.strerror or e} (set FSMTL_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_USER_ERROR
    return int(rc or 0)


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
