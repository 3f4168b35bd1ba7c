"""``fsmtl bench eval``'s baseline is timed fairly, and bad flags stop it before any work."""

from __future__ import annotations

import json

import pytest

import fsmtl.benchmarks.bench_eval as bench_eval
from fsmtl.core.cli import run_stage_main
def test_the_sklearn_loop_is_timed_after_an_untimed_warm_up_that_imports_it(tmp_path, monkeypatch) -> None:
    calls = []
    real = bench_eval.sklearn_loop

    def recording(support, labels, query, C):
        calls.append(len(support))
        return real(support, labels, query, C)

    monkeypatch.setattr(bench_eval, "sklearn_loop", recording)
    out = tmp_path / "e.json"
    assert bench_eval.main(["--tasks", "6", "--dim", "8", "--queries", "2", "--runs", "1", "--json", str(out)]) == 0
    assert calls == [1, 6]  # one task untimed (scikit-learn's import and first fit), then the timed loop
    doc = json.loads(out.read_text())
    assert doc["sklearn_tasks_timed"] == 6 and "OPENBLAS_CORETYPE" in doc["blas"]


@pytest.mark.parametrize("flags,message", [(["--tol", "0"], "--tol"), (["--C", "-1"], "--C"),
                                           (["--ways", "1"], "at least 2 classes"), (["--noise", "nan"], "--noise"),
                                           (["--device", "foo"], "--device")])
def test_bad_flags_are_one_line_errors_before_any_work(flags, message, monkeypatch, capsys) -> None:
    monkeypatch.setattr(bench_eval, "sklearn_loop", lambda *a: pytest.fail("measured before checking its flags"))
    try:
        rc = run_stage_main(bench_eval.main, ["--tasks", "4", *flags])
    except SystemExit as e:  # a flag argparse rejects itself (--device)
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
