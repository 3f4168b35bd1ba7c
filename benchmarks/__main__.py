"""``fsmtl bench <name>``: run one benchmark (or ``all``), print a table, write JSON."""

from __future__ import annotations

import importlib
import sys

_BENCHES = {
    "convert": "benchmarks.bench_convert",
    "pipeline": "benchmarks.bench_pipeline",
    "train": "benchmarks.bench_train",
    "eval": "benchmarks.bench_eval",
    "algorithms": "benchmarks.bench_algorithms",
    "all": "benchmarks.bench_all",
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: fsmtl bench {" + ",".join(_BENCHES) + "} [options]")
        return 0 if args else 2
    if args[0] not in _BENCHES:
        print(f"fsmtl bench: unknown benchmark {args[0]!r}; choose from {', '.join(_BENCHES)}", file=sys.stderr)
        return 2
    module = importlib.import_module(_BENCHES[args[0]])
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    from fsmtl.cli import run_stage_main

    sys.exit(run_stage_main(main, sys.argv[1:]))
