"""``fsmtl bench all``: every benchmark with CPU-sized defaults, gathered into one JSON.

Each benchmark runs through its own ``main(argv)`` (the same code as ``fsmtl bench <name>``),
writes its JSON to a temporary file, and this collects them under one document with the
hardware description. A benchmark that fails is recorded with its error and the others still run;
the exit code is then 1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks.common import hardware_info
from fsmtl.cli import plain_doc
from fsmtl.errors import FsmtlError
from fsmtl.fileio import atomic_write_json

# name -> extra CLI arguments giving CPU-sized defaults
_PLAN: dict[str, list[str]] = {
    "convert": [],
    "pipeline": [],
    "train": [],
    "eval": [],
    "algorithms": ["--minutes", "0.5"],  # 30 s of time-to-accuracy training per algorithm
}


def main(argv: list[str] | None = None, plan: dict[str, list[str]] | None = None) -> int:
    """Run the benchmarks of ``plan`` (default: every one, CPU-sized) and gather their JSON."""
    plan = _PLAN if plan is None else plan
    p = argparse.ArgumentParser(prog="fsmtl bench all", description=plain_doc(__doc__))
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/bench_all.json"),
                   help="results JSON (default benchmarks/results/bench_all.json)")
    p.add_argument("--only", default=",".join(plan), help="comma-separated subset of " + ",".join(plan))
    a = p.parse_args(argv)
    names = [n for n in a.only.split(",") if n]
    unknown = set(names) - set(plan)
    if unknown:
        raise FsmtlError(f"--only: unknown benchmark(s) {sorted(unknown)}; choose from {list(plan)}")
    doc: dict = {"benchmark": "all", "hardware": hardware_info(), "results": {}, "errors": {}}
    with tempfile.TemporaryDirectory(prefix="fsmtl-bench-") as tmp:
        for name in names:
            out = Path(tmp) / f"{name}.json"
            print(f"\n=== fsmtl bench {name} ===", flush=True)
            t0 = time.perf_counter()
            try:
                module = importlib.import_module(f"benchmarks.bench_{name}")
                rc = module.main([*plan[name], "--json", str(out)])
                if rc:
                    raise RuntimeError(f"exit code {rc}")
                doc["results"][name] = json.loads(out.read_text())
            except SystemExit as e:  # its argparse refused the options (it printed why)
                doc["errors"][name] = f"bad options {plan[name]} (exit code {e.code})"
            except Exception as e:  # noqa: BLE001 - one failed benchmark must not hide the others
                traceback.print_exc()
                doc["errors"][name] = f"{type(e).__name__}: {e}"
            doc.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.json, doc)
    print(f"\nwrote {a.json}; failed: {sorted(doc['errors']) or 'none'}")
    return 1 if doc["errors"] else 0
