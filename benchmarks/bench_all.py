"""``fsmtl bench all``: every benchmark with CPU-sized defaults, gathered into one JSON.

Each benchmark runs through its own ``main(argv)`` (the same code as ``fsmtl bench <name>``) and
writes its JSON to ``--out`` (``OUT/<name>.json``; the algorithms benchmark also its plots and
training runs there); this collects them under one document (``--json``) with the hardware
description. A benchmark that fails is recorded with its error and the others still run; the exit
code is then 1. Interrupted (Ctrl-C, SIGTERM), it writes the benchmarks finished so far, marked
partial, and exits 130 (143).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from fsmtl.benchmarks.common import check_writable, check_writable_dir, hardware_info, parse_names, write_json
from fsmtl.core.cli import CliParser, plain_doc
from fsmtl.core.errors import FsmtlError

# name -> extra CLI arguments giving CPU-sized defaults
_PLAN: dict[str, list[str]] = {
    "convert": [],
    "pipeline": [],
    "train": [],
    "eval": [],
    "algorithms": ["--minutes", "0.5"],  # 30 s of time-to-accuracy training per algorithm
}
_TAKES_OUT = {"algorithms"}  # benchmarks that write more than their JSON: given OUT/<name>/


def main(argv: list[str] | None = None, plan: dict[str, list[str]] | None = None) -> int:
    """Run the benchmarks of ``plan`` (default: every one, CPU-sized) and gather their JSON."""
    plan = _PLAN if plan is None else plan
    p = CliParser(prog="fsmtl bench all", description=plain_doc(__doc__))
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/bench_all.json"),
                   help="results JSON (default benchmarks/results/bench_all.json)")
    p.add_argument("--out", type=Path, default=Path("runs/bench-all"),
                   help="each benchmark's JSON, plots and training runs (default runs/bench-all)")
    p.add_argument("--only", default=",".join(plan), help="comma-separated subset of " + ",".join(plan))
    a = p.parse_args(argv)
    names = parse_names("--only", a.only, list(plan))
    check_writable(a.json)
    check_writable_dir(a.out)
    doc: dict[str, Any] = {"benchmark": "all", "out": str(a.out), "hardware": hardware_info(), "results": {}, "errors": {}}
    for name in names:
        try:
            run_one(name, plan[name], a.out, doc)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep what finished, then stop as asked
            doc["partial"], doc["interrupted"] = True, name
            write_json(a.json, doc)
            print(f"\nwrote {a.json} (partial: interrupted during {name}; finished: {sorted(doc['results']) or 'none'})",
                  file=sys.stderr, flush=True)  # fmt: skip
            raise
    write_json(a.json, doc)
    print(f"\nwrote {a.json} (each benchmark's output in {a.out}/); failed: {sorted(doc['errors']) or 'none'}")
    return 1 if doc["errors"] else 0


def run_one(name: str, args: list[str], out: Path, doc: dict[str, Any]) -> None:
    """Run benchmark ``name`` with ``args``, its JSON at ``out/<name>.json``; record it in ``doc``."""
    path = out / f"{name}.json"
    path.unlink(missing_ok=True)  # an earlier run's file must not pass for this run's
    extra = ["--out", str(out / name)] if name in _TAKES_OUT else []
    print(f"\n=== fsmtl bench {name} ===", flush=True)
    t0 = time.perf_counter()
    try:
        module = importlib.import_module(f"fsmtl.benchmarks.bench_{name}")
        rc = module.main([*args, *extra, "--json", str(path)])
        if rc:
            raise RuntimeError(f"exit code {rc}")
        doc["results"][name] = json.loads(path.read_text())
    except SystemExit as e:  # its argparse refused the options (it printed why)
        doc["errors"][name] = f"bad options {args} (exit code {e.code})"
    except KeyboardInterrupt:
        if path.is_file():  # the rows it measured before the stop (written, marked partial)
            doc["results"][name] = json.loads(path.read_text())
        raise
    except FsmtlError as e:  # a one-line user error, as `fsmtl bench <name>` would print it
        print(f"fsmtl bench {name}: error: {e}", file=sys.stderr)
        doc["errors"][name] = str(e)
    except Exception as e:  # noqa: BLE001 - one failed benchmark must not hide the others
        traceback.print_exc()
        doc["errors"][name] = f"{type(e).__name__}: {e}"
    finally:
        doc.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
