"""CLI helpers every stage's command line shares: one-line usage errors, plain --help text, and
the wrapper that maps a stage's failures to a one-line message and an exit code."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from typing import Callable, NoReturn, Sequence

from fsmtl.core.errors import EXIT_USER_ERROR, FsmtlError

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

