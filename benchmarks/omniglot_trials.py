"""Omniglot recipe trials: train each setting for a fixed number of minutes, score it on the
held-out *validation* alphabets (20-way 1-shot, classes within one alphabet), write one JSON line a trial.

Every trial is scored with the logreg head at C=3 and no support views, whatever the preset's test
settings, so rows compare across rounds. Tuning reads only the val split; the test alphabets are scored once, by the final recipe
(``fsmtl train --preset omniglot`` then ``fsmtl eval``), not here.

    python -m fsmtl.benchmarks.omniglot_trials --data D --minutes 4 --out trials.jsonl \
        --trial base= --trial wide="--width 128" ...
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path


def run_trial(data: str, name: str, flags: str, minutes: float, work: Path, tasks: int, seed: int) -> dict:
    """Train ``--preset omniglot`` + ``flags`` for ``minutes``, evaluate best.pt on val; one record."""
    out = work / name
    cmd = [sys.executable, "-m", "fsmtl", "train", "--data", data, "--preset", "omniglot", "--out", str(out),
           "--overwrite", "--wandb", "disabled", "--no-progress", "--max-minutes", str(minutes), "--seed", str(seed),
           "--no-trainval", "--val-split", "val",  # trials tune on val: the preset's final recipe trains on it
           *shlex.split(flags)]  # fmt: skip
    t0 = time.monotonic()
    tr = subprocess.run(cmd, capture_output=True, text=True)
    train_s = time.monotonic() - t0
    rec: dict = {"trial": name, "flags": flags, "minutes": minutes, "seed": seed, "train_s": round(train_s, 1)}
    if tr.returncode != 0:
        return {**rec, "error": tr.stderr.strip().splitlines()[-1:]}
    rec["seed"] = json.loads((out / "config.json").read_text())["seed"]  # the seed the run used (flags may set it)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rec["steps"] = rows[-1]["step"] if rows else 0
    rec["val_curve"] = [round(100 * r["val_acc"], 2) for r in rows if r.get("val_acc") is not None]
    for shots in (1, 5):
        report = work / f"{name}_val{shots}.json"
        ev = subprocess.run([sys.executable, "-m", "fsmtl", "eval", "--run", str(out), "--split", "val",
                             "--ways", "20" if shots == 1 else "5", "--shots", str(shots), "--queries", "5",
                             "--tasks", str(tasks), "--within-group", "--support-views", "0", "--C", "3", "--json", str(report)],
                            capture_output=True, text=True)  # fmt: skip
        if ev.returncode != 0:
            rec[f"eval{shots}_error"] = ev.stderr.strip().splitlines()[-1:]
            continue
        r = json.loads(report.read_text())["results"][str(shots)]["logreg"]
        key = "val_20w1s_err" if shots == 1 else "val_5w5s_err"
        rec[key], rec[key + "_ci95"] = round(100 - r["acc"], 2), round(r["ci95"], 2)
    return rec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--work", default="runs/omniglot_trials")
    p.add_argument("--out", default="benchmarks/results/omniglot_trials.jsonl")
    p.add_argument("--tasks", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trial", action="append", required=True, help="name=flags")
    a = p.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    for spec in a.trial:
        name, _, flags = spec.partition("=")
        rec = run_trial(a.data, name, flags, a.minutes, work, a.tasks, a.seed)
        print(json.dumps(rec), flush=True)
        with open(a.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
