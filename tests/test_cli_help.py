"""What ``--help`` shows, and ``python -m fsmtl`` as the same program as ``fsmtl``."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fsmtl.cli import main as fsmtl_main
from fsmtl.core.cli import plain_doc
ROOT = Path(__file__).resolve().parents[1]
MARKUP = re.compile(r"``|:(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|ref|doc):`")
BENCHES = ["convert", "pipeline", "train", "eval", "algorithms", "race", "traffic", "all"]
COMMANDS = [
    ["convert"], ["verify"], ["train"], ["eval"], ["bench"], ["plot"],
    ["demo"], ["doctor"],
    *[["bench", b] for b in BENCHES],
]  # fmt: skip


def test_plain_doc_drops_rest_roles_and_double_backticks_but_keeps_the_names():
    text = "``fsmtl plot RUN``: the step is :func:`train.loop.train_step`, a :class:`~eval.run.Run`"
    assert plain_doc(text) == "fsmtl plot RUN: the step is train.loop.train_step, a eval.run.Run"
    assert plain_doc(None) == ""


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_text_shows_no_rest_markup(command, capsys):
    try:
        rc = fsmtl_main([*command, "--help"])
    except SystemExit as e:  # argparse's --help
        rc = e.code
    assert rc == 0
    out = capsys.readouterr().out
    assert "usage:" in out and not MARKUP.search(out), MARKUP.findall(out)


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


@pytest.mark.parametrize("bench", BENCHES)
def test_every_bench_flag_has_a_help_text(bench, monkeypatch):
    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Parsed) as got:
        fsmtl_main(["bench", bench])
    bare = [a.option_strings[0] for a in got.value.parser._actions if a.option_strings and not a.help]
    assert bare == []


def _python_m_fsmtl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fsmtl", *args], cwd=ROOT, capture_output=True, text=True, check=False,
                          timeout=120)  # fmt: skip


def test_python_m_fsmtl_runs_the_fsmtl_command(tmp_path):
    from fsmtl import __version__

    version = _python_m_fsmtl("--version")
    assert version.returncode == 0 and version.stdout == f"fsmtl {__version__}\n"
    plot = _python_m_fsmtl("plot", str(tmp_path))  # a user error: one line, exit 2, as from `fsmtl`
    assert plot.returncode == 2
    assert plot.stderr == f"fsmtl: error: {tmp_path / 'metrics.jsonl'}: not found (expected the metrics of a training run)\n"
    assert "commands:" in _python_m_fsmtl("--help").stdout


@pytest.mark.parametrize("command", [["train"], ["eval"], ["convert", "synthetic", "--out", "unused"], ["plot", "x"], ["demo"],
                                     ["bench", "pipeline"], ["bench", "eval"]], ids=" ".join)
def test_a_usage_error_is_one_line_naming_the_help(command, capsys):
    try:
        rc = fsmtl_main([*command, "--no-such-flag"])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--no-such-flag" in err and "--help)" in err


def test_an_unknown_flag_after_convert_names_converts_help(capsys):
    assert fsmtl_main(["convert", "synthetic", "--out", "unused", "--bogus"]) == 2
    assert "(see fsmtl convert --help)" in capsys.readouterr().err
