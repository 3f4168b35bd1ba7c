"""``fsmtl bench eval`` runs end to end on a tiny setting and reports agreement with sklearn."""

from __future__ import annotations

import json

from fsmtl.benchmarks.bench_eval import main


def test_bench_eval_writes_rows_for_sklearn_and_batched_with_the_accuracy_difference(tmp_path, capsys):
    out = tmp_path / "bench_eval.json"
    rc = main(["--tasks", "12", "--dim", "32", "--queries", "4", "--runs", "1", "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert [r["tasks"] for r in doc["rows"]] == [12, 12]
    assert doc["prediction_agreement_pct"] >= 99.0 and abs(doc["accuracy_difference_pct"]) <= 1.0
    assert "accuracy difference" in capsys.readouterr().out
