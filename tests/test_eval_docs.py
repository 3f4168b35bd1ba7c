"""The Python example in docs/eval.md runs as written (against a small run made here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "eval.md"


def test_docs_python_example_runs(tiny_shards, tmp_path, capsys):
    from test_eval_protocol import write_run  # tests/ is on sys.path (pytest rootdir conftest)

    if not DOC.is_file():
        pytest.skip("docs/eval.md not present")
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    run = write_run(tmp_path / "demo", tiny_shards)
    assert '"runs/demo/train"' in code  # the run `fsmtl demo` writes, replaced here by the small one
    exec(compile(code.replace('"runs/demo/train"', repr(str(run))), str(DOC), "exec"), {})
    out = capsys.readouterr().out
    assert out.startswith("predicted [") and "true [0, 0, 0, 1" in out
