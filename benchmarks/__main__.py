"""``fsmtl bench <name>``: run one benchmark (or ``all``), print a table, write JSON."""

from __future__ import annotations

import importlib
import sys

_BENCHES = {
    "convert": "fsmtl.benchmarks.bench_convert",
    "pipeline": "fsmtl.benchmarks.bench_pipeline",
    "train": "fsmtl.benchmarks.bench_train",
    "eval": "fsmtl.benchmarks.bench_eval",
    "algorithms": "fsmtl.benchmarks.bench_algorithms",
    "traffic": "fsmtl.benchmarks.bench_traffic",
    "race": "fsmtl.benchmarks.bench_race",
    "all": "fsmtl.benchmarks.bench_all",
}
_HELP = {
    "convert": "60,000 CIFAR-100-shaped images converted to CIFAR-FS shards, seconds",
    "pipeline": "Lee19-augmented task batches per second: each back end against the seed's way",
    "train": "ResNet-12 training step: fp32 eager vs bf16 + channels_last (+ compile), data wait, peak memory",
    "eval": "2,000 test tasks: batched logistic regression vs scikit-learn per task",
    "algorithms": "MTL vs ProtoNet / MetaOptNet / ANIL / MAML: step cost and time to accuracy",
    "race": "Omniglot test error vs training minutes: MTL against ProtoNet / MetaOptNet / MAML / ANIL / learn2learn alone",
    "traffic": "the CUDA pipeline path's ops per batch and memory traffic per image, counted on the CPU",
    "all": "every benchmark above but race (an hour) and traffic, at CPU-sized defaults, one JSON",
}


def _usage() -> str:
    width = max(map(len, _BENCHES))
    lines = ["usage: fsmtl bench <benchmark> [options]", "", "benchmarks:"]
    lines += [f"  {name.ljust(width)}  {_HELP[name]}" for name in _BENCHES]
    return "\n".join(lines + ["", "Run 'fsmtl bench <benchmark> --help' for its options; results: benchmarks/RESULTS.md."])


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] not in _BENCHES:
        print(f"fsmtl bench: unknown benchmark {args[0]!r}; choose from {', '.join(_BENCHES)}", file=sys.stderr)
        return 2
    module = importlib.import_module(_BENCHES[args[0]])
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    from fsmtl.core.cli import run_stage_main
    sys.exit(run_stage_main(main, sys.argv[1:]))
