"""Every ``fsmtl`` command refuses a bad flag value in one line, ``PROG: error: ...`` or
``fsmtl: error: ...``, with exit code 2: never a traceback, and before any work.

Table-driven: each command, each of its numeric or device flags, and bad values of each kind
(negative, zero, huge, nan, inf, a word, a malformed device). Everything runs in-process through
``fsmtl.cli.main``; the values are refused while the flags are parsed and checked, so no test
converts, trains or measures anything (the shard directory the train rows need is a tiny one,
made once).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fsmtl.cli import main

HUGE = str(10**12)  # sizes an allocation far past any machine's memory
BEYOND = str(10**30)  # past int64: what torch and numpy take
NEG, ZERO, NAN, INF, WORD = "-3", "0", "nan", "inf", "lots"
BAD_DEVICES = ("cuda:x", "tpu", "cuda:-1", "gpu0", "")

COUNT = (NEG, ZERO, HUGE, NAN, WORD)  # a count >= 1 that sizes memory
COUNT0 = (NEG, HUGE, NAN, WORD)  # a count >= 0 that sizes memory
BUDGET = (NEG, ZERO, BEYOND, NAN, WORD)  # a count >= 1 that only bounds time
SEED = (NEG, BEYOND, NAN, WORD)
REAL = (NEG, ZERO, NAN, INF, WORD)  # a real > 0
REAL0 = (NEG, NAN, INF, WORD)  # a real >= 0
WORKERS = (NEG, ZERO, BEYOND, NAN, WORD)

# command (its words before the flag; {tmp} and {data} are filled in) -> flag -> bad values
TABLE: dict[str, dict[str, tuple[str, ...]]] = {
    "convert synthetic --out {tmp}/o --no-progress": {
        "--size": (NEG, ZERO, HUGE, NAN, WORD), "--channels": (NEG, ZERO, "2", HUGE, WORD),
        "--workers": WORKERS, "--seed": SEED, "--classes": ("-1,2,2", "1,1", HUGE + ",1,1", "a,b,c"),
        "--per-class": COUNT, "--difficulty": (NEG, NAN, INF, WORD),
    },
    "convert imagefolder --src {tmp}/src --out {tmp}/o --no-progress": {
        "--size": (NEG, HUGE, NAN), "--channels": ("2", WORD), "--workers": WORKERS, "--seed": SEED,
        "--ratios": ("nan,0.5,0.5", "inf,0,0", "-1,1,1", "0.5,0.5", "a,b,c"),
    },
    "convert omniglot --src {tmp}/src --out {tmp}/o --no-progress": {"--val-alphabets": (NEG, HUGE, NAN, WORD)},
    "train --data {data} --out {tmp}/run --no-progress --wandb disabled": {
        **{f: COUNT for f in ("--meta-batch-size", "--train-shots", "--test-shots", "--test-queries",
                              "--val-batch-tasks")},
        "--train-ways": (NEG, ZERO, "1", HUGE, NAN, WORD), "--test-ways": (NEG, "1", HUGE, WORD),
        "--train-queries": COUNT0,
        **{f: BUDGET for f in ("--epoch-length", "--val-epoch-length", "--log-every", "--max-epochs",
                               "--max-steps", "--step-size", "--cosine-epochs", "--early-stop-patience")},
        "--plateau-patience": (NEG, BEYOND, NAN, WORD),
        "--seed": SEED, "--workers": (NEG, BEYOND, NAN, WORD),
        "--lr": REAL, "--max-minutes": REAL, "--step-gamma": REAL, "--test-C": REAL,
        "--weight-decay": REAL0, "--grad-clip": REAL0,
        "--momentum": (NEG, "1", NAN, INF, WORD), "--drop-rate": (NEG, "1", NAN, INF, WORD),
        "--plateau-factor": (NEG, ZERO, "1", NAN, INF, WORD),
        "--width": (NEG, ZERO, HUGE, NAN, WORD), "--pools": (NEG, "5", NAN, WORD), "--test-support-views": (NEG, HUGE, NAN, WORD),
        "--snapshot-minutes": REAL, "--warmup-frac": (NEG, "1", NAN, INF, WORD),
        "--lr-floor": (NEG, "2", NAN, INF, WORD),
        **{f: (NEG, "1000", NAN, INF, WORD) for f in ("--affine-degrees", "--affine-scale", "--affine-shear", "--elastic-px")},
        "--device": BAD_DEVICES,
    },
    "eval --run {tmp}/no-run": {
        "--ways": (NEG, "1", HUGE, NAN, WORD), "--queries": COUNT, "--tasks": COUNT,
        "--batch-tasks": (NEG, ZERO, NAN, WORD), "--shots": COUNT, "--finetune-steps": (NEG, ZERO, BEYOND, NAN, WORD),
        "--support-views": (NEG, HUGE, NAN, WORD),
        "--seed": SEED, "--C": REAL, "--svm-C": REAL, "--ridge-lam": REAL, "--finetune-lr": REAL,
        "--device": BAD_DEVICES,
    },
    "bench pipeline --runs 1": {
        "--sizes": (NEG, "4", HUGE, NAN, WORD), "--tasks": COUNT, "--ways": COUNT, "--shots": COUNT,
        "--queries": COUNT0, "--workers": WORKERS, "--batches": BUDGET, "--warmup": (NEG, BEYOND, NAN, WORD),
        "--runs": BUDGET, "--device": BAD_DEVICES,
    },
    "bench train --no-compile": {
        "--size": COUNT, "--tasks": COUNT, "--steps": BUDGET, "--runs": BUDGET,
        "--warmup": (NEG, BEYOND, NAN, WORD), "--device": BAD_DEVICES,
    },
    "bench eval": {
        "--tasks": COUNT, "--ways": (NEG, ZERO, "1", HUGE, WORD), "--shots": COUNT, "--queries": COUNT,
        "--dim": COUNT, "--noise": REAL0, "--C": REAL, "--tol": REAL, "--batch-tasks": (NEG, ZERO, NAN, WORD),
        "--runs": BUDGET, "--sklearn-tasks": BUDGET, "--seed": SEED, "--threads": WORKERS,
        "--device": BAD_DEVICES,
    },
    "bench convert": {"--runs": BUDGET, "--workers": WORKERS},
    "bench algorithms --out {tmp}/alg": {
        "--size": COUNT, "--ways": (NEG, "1", HUGE, WORD), "--shots": COUNT, "--queries": COUNT,
        "--tasks": COUNT, "--steps": BUDGET, "--runs": BUDGET, "--warmup": (NEG, BEYOND, NAN, WORD),
        "--minutes": REAL, "--val-every": REAL, "--val-tasks": COUNT, "--device": BAD_DEVICES,
    },
    "bench traffic": {"--sizes": (NEG, "4", HUGE, NAN, WORD), "--tasks": COUNT, "--batches": BUDGET},
    "plot {tmp}/no-run": {"--x": (WORD, NEG)},
    "demo --out {tmp}/demo --no-bench": {
        "--size": (NEG, ZERO, HUGE, NAN, WORD), "--per-class": COUNT, "--classes": ("-1,2,2", "1,1", "a,b,c"),
        "--minutes": REAL, "--tasks": COUNT, "--device": BAD_DEVICES,
    },
}

CASES = [
    pytest.param(cmd, flag, value, id=f"{cmd.split(' --')[0].split(' {')[0]} {flag} {value or repr(value)}")
    for cmd, flags in TABLE.items()
    for flag, values in flags.items()
    for value in values
]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic shard directory (3 splits of 5 classes x 10 images, 8 px): train's --data."""
    out = tmp_path_factory.mktemp("fuzz") / "data"
    argv = ["convert", "synthetic", "--out", str(out), "--size", "8", "--classes", "5,5,5",
            "--per-class", "10", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    return out


@pytest.mark.parametrize("cmd,flag,value", CASES)
def test_a_bad_flag_value_is_refused_in_one_line_with_exit_code_2(
    cmd: str, flag: str, value: str, tmp_path: Path, shards: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # anything a command writes by default lands here, not in the repo
    (tmp_path / "src").mkdir()
    argv = cmd.format(tmp=tmp_path, data=shards).split() + [f"{flag}={value}"]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse exits from inside a stage; the process's exit code is the same
        rc = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in out + err
    assert rc == 2, f"{argv}: exit code {rc}, stderr {err!r}"
    assert len(lines) == 1, f"{argv}: expected one line on stderr, got {lines}"
    prog = lines[0].split(": error: ")[0]
    assert prog.startswith("fsmtl") and ": error: " in lines[0], lines[0]
    name = flag.lstrip("-")
    assert name in lines[0] or name.replace("-", "_") in lines[0], f"{flag} not named in {lines[0]!r}"
    assert not (tmp_path / "o").exists() and not (tmp_path / "run").exists(), "work started before the refusal"


def test_every_numeric_flag_of_the_train_parser_is_in_the_table() -> None:
    """A new numeric TrainConfig field must be fuzzed too: the table lists every int/float flag."""
    import typing
    from dataclasses import fields

    from fsmtl.train.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    numeric = {f"--{f.name.replace('_', '-')}" for f in fields(TrainConfig)
               if set(typing.get_args(hints[f.name]) or (hints[f.name],)) & {int, float}}  # fmt: skip
    table = set(next(v for k, v in TABLE.items() if k.startswith("train")))
    assert numeric - table == set()
