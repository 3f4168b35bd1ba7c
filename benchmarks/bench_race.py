"""``fsmtl bench race``: test error against training minutes on real images, MTL against meta-learning.

The paper's headline is a race (MTL reached MetaOptNet's mini-ImageNet accuracy in 3.7 GPU-hours
where MetaOptNet took 85.6). This runs it on the Omniglot within-alphabet protocol: every method
trains for ``--minutes`` on the same shards (default: the embedded Omniglot zips, converted with the
converter's defaults into OUT/data), with the same preset (``--preset omniglot``: its tasks, its
optimizer and its budget-following cosine schedule; only ``--algorithm`` differs, and the learning
rate where ``--lr METHOD=LR,...`` gives a method its own, chosen on val), on the train split
only (``--no-trainval``: the l2l line cannot merge val, so no fsmtl method does), no validation
(``--val-split none``), saving a snapshot every ``--snapshot-minutes`` of training time
(``--snapshot-minutes``: saving excluded from the clock) and its final weights at the budget's end.
After training, every snapshot is scored on the same fixed test tasks (``--ways``-way
``--shots``-shot, ``--queries`` queries, all of a task's classes from one test alphabet, ``--tasks``
tasks, episode seed 0) with the same head (L2-normalised features, logistic regression C=3): the
evaluation is off the clock for every method.

Methods: ``mtl`` (fsmtl), ``protonet``, ``metaoptnet``, ``maml``, ``anil`` (fsmtl's pipeline
and loop, ``--algorithm``), and ``l2l``: the way a user does it with learn2learn alone, its own
data path and its example MAML loop (``benchmarks/race_l2l.py`` says exactly what it runs).

Repeats: every method runs with seed 0; then the ``--lead`` methods with the lowest final error run
seeds 1 .. ``--seeds``-1 as well, so the ranking at the top is not one draw. ``--jobs N`` runs N
trainings at once, each pinned to its own share of the CPU cores with that many threads (every
method gets the same share; the default, 1, gives each run the whole machine).

Output: OUT/race.json (``--json``) with every point of every run, the summary (each method's final
and best error, the minutes it needed to reach MTL's final error, or "not reached") and the speed-up
of MTL at equal accuracy; the plot beside it (``race.png``: error vs minutes, one line per method,
the mean over its seeds, 95% intervals). Runs whose folder already holds this job's finished
training are reused (their scores too), so an interrupted race picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fsmtl.benchmarks.common import check_writable, check_writable_dir, format_table, parse_names, positive_int, write_json
from fsmtl.core.cli import CliParser, plain_doc
from fsmtl.core.errors import FsmtlError

FSMTL_METHODS = ("mtl", "protonet", "metaoptnet", "maml", "anil")
METHODS = (*FSMTL_METHODS, "l2l")
NEEDS_L2L = ("maml", "anil", "l2l")


# ---------------------------------------------------------------- jobs


def parse_method_lrs(text: str) -> dict[str, float]:
    """``--lr mtl=2e-2,metaoptnet=1e-3``: a learning rate per fsmtl method (the others keep the
    preset's). The l2l line keeps its example loop's own rates."""
    from fsmtl.core.checks import check_real

    lrs: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, eq, value = (x.strip() for x in part.partition("="))
        if not eq or name not in FSMTL_METHODS:
            raise FsmtlError(f"--lr: expected METHOD=LR with METHOD one of {', '.join(FSMTL_METHODS)} "
                             f"(l2l keeps its own loop's rates), got {part!r}")  # fmt: skip
        if name in lrs:
            raise FsmtlError(f"--lr: {name} given twice")
        try:
            number: object = float(value)
        except ValueError:
            number = value
        lrs[name] = check_real(number, f"--lr {name}", 0.0, lo_open=True)
    return lrs


def job_argv(method: str, seed: int, a: argparse.Namespace, data: Path, run: Path) -> list[str]:
    """The command of one training run (``python -m ...``)."""
    if method == "l2l":
        return [sys.executable, "-m", "fsmtl.benchmarks.race_l2l", "--data", str(data), "--out", str(run),
                "--minutes", str(a.minutes), "--snapshot-minutes", str(a.snapshot_minutes), "--seed", str(seed)]  # fmt: skip
    return [sys.executable, "-m", "fsmtl", "train", "--data", str(data), "--preset", a.preset, "--algorithm", method,
            "--out", str(run), "--no-trainval", "--val-split", "none", "--max-minutes", str(a.minutes), "--max-epochs", "100000",
            "--snapshot-minutes", str(a.snapshot_minutes), "--seed", str(seed), "--device", "cpu",
            "--wandb", "disabled", "--no-progress", "--overwrite",
            *(["--lr", repr(a.lrs[method])] if method in a.lrs else [])]  # fmt: skip


def final_file(method: str, run: Path) -> Path:
    """Where a finished run keeps its budget-end weights."""
    return run / "final.pt" if method == "l2l" else run / "checkpoints" / "last.pt"


def finished(method: str, run: Path, argv: list[str]) -> bool:
    """Whether ``run`` holds this exact job, trained to its end (then it is reused, not retrained)."""
    try:
        job = json.loads((run / "race_job.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return job.get("argv") == argv[1:] and job.get("done") is True and final_file(method, run).is_file()


def core_shares(jobs: int) -> list[set[int]]:
    """The usable CPU cores split into ``jobs`` equal, disjoint shares (refused: more jobs than cores)."""
    cores = sorted(os.sched_getaffinity(0))
    if jobs > len(cores):
        raise FsmtlError(f"--jobs {jobs}: this process may use only {len(cores)} cores")
    per = len(cores) // jobs
    return [set(cores[i * per : (i + 1) * per]) for i in range(jobs)]


def run_jobs(jobs: list[tuple[str, int]], a: argparse.Namespace, data: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """Train every (method, seed) not already finished, ``--jobs`` at a time; logs in RUN/train.log."""
    from fsmtl.core.fileio import atomic_write_json

    shares = core_shares(a.jobs)
    free, running, done = list(range(a.jobs)), {}, {}
    todo = list(jobs)
    try:
        while todo or running:
            while todo and free:
                method, seed = todo.pop(0)
                run = a.out / "runs" / f"{method}-s{seed}"
                argv = job_argv(method, seed, a, data, run)
                if finished(method, run, argv):
                    print(f"  {method} seed {seed}: reusing {run}", flush=True)
                    done[(method, seed)] = json.loads((run / "race_job.json").read_text(encoding="utf-8"))
                    continue
                run.mkdir(parents=True, exist_ok=True)
                slot = free.pop(0)
                cores = shares[slot]
                threads = {k: str(len(cores)) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}
                env = {**os.environ, **(threads if a.jobs > 1 else {})}
                log = open(run / "train.log", "w", encoding="utf-8")  # noqa: SIM115 - closed when it ends
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        preexec_fn=(lambda c=cores: os.sched_setaffinity(0, c)) if a.jobs > 1 else None)  # fmt: skip
                running[proc] = (method, seed, run, argv, slot, log, time.monotonic())
                print(f"  {method} seed {seed}: training {a.minutes:g} min on cores {sorted(cores)} -> {run}", flush=True)
            time.sleep(0.5)
            for proc in [p for p in running if p.poll() is not None]:
                method, seed, run, argv, slot, log, t0 = running.pop(proc)
                log.close()
                free.append(slot)
                if proc.returncode != 0:
                    tail = (run / "train.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
                    raise FsmtlError(f"bench race: {method} seed {seed} exited with {proc.returncode} "
                                     f"(see {run / 'train.log'}): {' | '.join(tail)}")  # fmt: skip
                job = {"argv": argv[1:], "done": True, "method": method, "seed": seed,
                       "process_s": round(time.monotonic() - t0, 1), "cores": sorted(shares[slot])}  # fmt: skip
                atomic_write_json(run / "race_job.json", job)
                done[(method, seed)] = job
                print(f"  {method} seed {seed}: done in {job['process_s']:.0f} s", flush=True)
    finally:
        for proc in running:
            proc.terminate()
        for proc, (*_, log, _t0) in running.items():
            proc.wait()
            log.close()
    return done


# ---------------------------------------------------------------- scoring


def run_points(method: str, run: Path) -> list[Path]:
    """The run's snapshots in time order, then its budget-end weights."""
    snaps = sorted((run / "snapshots").glob("t*.pt"))
    return [*snaps, final_file(method, run)]


def load_point(method: str, path: Path) -> tuple[Any, list[float], list[float], float, int]:
    """(frozen backbone on the CPU, mean, std, training seconds, steps) of one snapshot file."""
    if method == "l2l":
        from fsmtl.benchmarks.race_l2l import load_l2l_features

        model, info = load_l2l_features(path)
        return model, [0.0], [1.0], float(info["wall_s"]), int(info["step"])  # its own 0..1 scale, strokes 1
    from fsmtl.eval.run import load_run

    r = load_run(path, device="cpu", precision="fp32")
    step = r.info["snapshot_step"] if r.info.get("snapshot_step") is not None else r.info.get("step")
    return r.model, r.mean, r.std, float(r.info.get("wall_s") or 0.0), int(step or 0)


def eval_key(a: argparse.Namespace) -> str:
    return f"{a.ways}w{a.shots}s{a.queries}q{a.tasks}t-views{a.support_views}-within"


def score_run(method: str, run: Path, split: Any, views: Any, a: argparse.Namespace) -> list[dict[str, Any]]:
    """Every point of one run scored on the fixed test tasks (cached in RUN/race_scores.json)."""
    from fsmtl.core.fileio import atomic_write_json
    from fsmtl.train.protocol import evaluate_backbone

    cache_path = run / "race_scores.json"
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    key, points = eval_key(a), []
    for path in run_points(method, run):
        st = path.stat()
        ident = f"{path.name}:{st.st_size}:{st.st_mtime_ns}:{key}"
        if ident not in cache:
            model, mean, std, wall_s, step = load_point(method, path)
            res = evaluate_backbone(model, split, mean, std, ways=a.ways, shots=a.shots, queries=a.queries,
                                    n_tasks=a.tasks, heads=["logreg"], seed=0, device="cpu", dtype=None,
                                    within_group=True, support_views=views)["logreg"]  # fmt: skip
            cache[ident] = {"file": path.name, "wall_s": wall_s, "minutes": wall_s / 60.0, "step": step,
                            "acc": res["acc"], "err": 100.0 - res["acc"], "ci95": res["ci95"],
                            "per_task": res["per_task"]}  # fmt: skip
            atomic_write_json(cache_path, cache)
        points.append(cache[ident])
    return points


# ---------------------------------------------------------------- summary


def mean_curve(runs: list[list[dict[str, Any]]]) -> list[dict[str, float]]:
    """The seeds' curves averaged point by point (the k-th snapshot of each; the shortest run sets
    the length, its final point last): minutes and error means, and the 95% interval of the mean
    over every (seed, task) pair."""
    n = min(len(r) for r in runs)
    out = []
    for k in range(n):
        pts = [r[k] if k < n - 1 else r[-1] for r in runs]
        per_task = [v for p in pts for v in p["per_task"]]
        m = sum(per_task) / len(per_task)
        var = sum((v - m) ** 2 for v in per_task) / max(1, len(per_task) - 1)
        out.append({"minutes": sum(p["minutes"] for p in pts) / len(pts), "err": 100.0 - m,
                    "ci95": 1.96 * math.sqrt(var / len(per_task)), "n": len(pts)})  # fmt: skip
    return out


def reach_minutes(curve: list[dict[str, float]], target: float) -> tuple[float | None, bool]:
    """Minutes at which ``curve``'s error first falls to ``target`` (linear between points), and
    whether that is only an upper bound (already reached at the first point)."""
    for k, p in enumerate(curve):
        if p["err"] <= target + 1e-9:
            if k == 0:
                return p["minutes"], True
            q = curve[k - 1]
            frac = (q["err"] - target) / max(q["err"] - p["err"], 1e-9)
            return q["minutes"] + frac * (p["minutes"] - q["minutes"]), False
    return None, False


def summarize(curves: dict[str, list[dict[str, float]]], finals: dict[str, list[float]],
              steps: dict[str, list[int]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per method: final error (mean, seed sd), best error, minutes to MTL's final error; and MTL's
    speed-up at equal accuracy against each other method (the other's best error as the bar)."""
    rows, speed = [], []
    mtl = curves.get("mtl")
    mtl_final = mtl[-1]["err"] if mtl else None
    for name, curve in curves.items():
        f = finals[name]
        sd = (sum((v - sum(f) / len(f)) ** 2 for v in f) / (len(f) - 1)) ** 0.5 if len(f) > 1 else None
        best = min(curve, key=lambda p: p["err"])
        row = {"method": name, "seeds": len(f), "steps": round(sum(steps[name]) / len(steps[name])),
               "final_err": curve[-1]["err"], "final_ci95": curve[-1]["ci95"], "seed_sd": sd,
               "best_err": best["err"], "best_at_min": best["minutes"]}  # fmt: skip
        if mtl_final is not None:
            t, bound = reach_minutes(curve, mtl_final)
            row["min_to_mtl_final"] = None if t is None else t
            row["min_to_mtl_final_note"] = "not reached" if t is None else ("<=" if bound else "")
        rows.append(row)
        if mtl and name != "mtl":
            t_other, _ = reach_minutes(curve, best["err"])
            t_mtl, bound = reach_minutes(mtl, best["err"])
            speed.append({"method": name, "bar_err": best["err"], "other_min": t_other, "mtl_min": t_mtl,
                          "speedup": None if t_mtl is None or not t_mtl else t_other / t_mtl,
                          "at_least": bound,
                          "note": "MTL never reached it" if t_mtl is None else ("MTL reached it at its first point: a lower bound" if bound else "")})  # fmt: skip
    rows.sort(key=lambda r: r["final_err"])
    return rows, speed


def plot_race(curves: dict[str, list[dict[str, float]]], seeds: dict[str, list[list[dict[str, Any]]]],
              out: Path, title: str) -> Path:
    from fsmtl.core.plots import new_pyplot, save_figure

    plt = new_pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.3))
    for name, curve in curves.items():
        x = [p["minutes"] for p in curve]
        y = [p["err"] for p in curve]
        lo = [p["err"] - p["ci95"] for p in curve]
        hi = [p["err"] + p["ci95"] for p in curve]
        n = len(seeds[name])
        (line,) = ax.plot(x, y, marker="o", ms=3, label=f"{name} ({n} seed{'s' if n > 1 else ''})")
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.18, lw=0)
        if n > 1:
            for r in seeds[name]:
                ax.plot([p["minutes"] for p in r], [p["err"] for p in r], color=line.get_color(), lw=0.6, alpha=0.5)
    ax.set_xlabel("training minutes (evaluation off the clock)")
    ax.set_ylabel("test error (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(plt, fig, out)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = CliParser(prog="fsmtl bench race", description=plain_doc(__doc__),
                  formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--data", type=Path, default=None, help="Omniglot shards (default: the embedded zips converted into OUT/data)")
    p.add_argument("--out", type=Path, default=Path("runs/race"), help="runs, scores, JSON and plot (default runs/race)")
    p.add_argument("--json", type=Path, default=None, help="results JSON (default OUT/race.json; the plot beside it, .png)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated (default: {','.join(METHODS)})")
    p.add_argument("--minutes", type=float, default=10.0, help="training minutes per run (default 10)")
    p.add_argument("--snapshot-minutes", type=float, default=1.0, help="minutes between scored snapshots (default 1)")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds of the leading methods (default 3)")
    p.add_argument("--lead", type=int, default=2, help="methods repeated over --seeds: the best after seed 0 (default 2)")
    p.add_argument("--jobs", type=positive_int, default=1, help="trainings at once, each on its own share of the cores (default 1)")
    p.add_argument("--preset", default="omniglot", help="the training preset every method shares (default omniglot)")
    p.add_argument("--ways", type=positive_int, default=20, help="test task classes, all from one alphabet (default 20)")
    p.add_argument("--shots", type=positive_int, default=1, help="test support images per class (default 1)")
    p.add_argument("--queries", type=positive_int, default=5, help="test queries per class (default 5)")
    p.add_argument("--tasks", type=positive_int, default=400, help="fixed test tasks per point (default 400)")
    p.add_argument("--support-views", type=int, default=0, help="augmented support copies at test time, every method (default 0)")
    p.add_argument("--lr", default="", help="learning rates per method, METHOD=LR,... (e.g. metaoptnet=1e-3; "
                   "default: the preset's for every fsmtl method; choose them on val)")  # fmt: skip
    a = p.parse_args(argv)
    a.lrs = parse_method_lrs(a.lr)
    if not (0 < a.minutes <= 24 * 60) or not (0 < a.snapshot_minutes <= a.minutes):
        raise FsmtlError("bench race: expected 0 < --snapshot-minutes <= --minutes <= 1440")
    if a.lead < 0 or not (0 <= a.support_views <= 64):
        raise FsmtlError("bench race: expected --lead >= 0 and 0 <= --support-views <= 64")
    from fsmtl.train.presets import preset_overrides

    preset_overrides(a.preset)  # an unknown name: its one-line error, before anything runs
    return a


def race_data(a: argparse.Namespace) -> Path:
    """``--data``, or the embedded Omniglot zips converted (converter defaults) into OUT/data once."""
    from fsmtl.preprocess.shard_verify import reusable_shards

    if a.data is not None:
        from fsmtl.preprocess.shard_reader import open_shards

        if open_shards(a.data).benchmark != "omniglot" and "l2l" in a.methods_list:
            raise FsmtlError(f"--data {a.data}: the l2l line unpacks Omniglot zips; give Omniglot shards or leave l2l out")
        return a.data
    data = a.out / "data"
    if reusable_shards(data, "omniglot"):
        print(f"  reusing {data} (verified)")
        return data
    from fsmtl.core.embedded import EMBEDDED_OMNIGLOT, check_embedded_omniglot
    from fsmtl.preprocess.__main__ import main as preprocess_main

    check_embedded_omniglot()
    code = preprocess_main(["convert", "omniglot", "--src", str(EMBEDDED_OMNIGLOT), "--out", str(data), "--force"])
    if code:
        raise FsmtlError(f"bench race: converting the embedded Omniglot zips failed ({code})")
    return data


def main(argv: list[str] | None = None) -> int:
    from fsmtl.benchmarks.common import write_results
    from fsmtl.preprocess.shard_reader import load_split

    a = parse_args(list(argv or []))
    a.methods_list = parse_names("--methods", a.methods, list(METHODS))
    skipped = {}
    if any(m in NEEDS_L2L for m in a.methods_list):
        from fsmtl.train.meta_baselines import import_l2l

        try:
            import_l2l()
        except FsmtlError as e:
            skipped = {m: str(e) for m in a.methods_list if m in NEEDS_L2L}
            a.methods_list = [m for m in a.methods_list if m not in NEEDS_L2L]
            for m, why in skipped.items():
                print(f"  skipping {m}: {why}")
    path = a.json or a.out / "race.json"
    check_writable(path, "--json" if a.json else "--out")
    check_writable_dir(a.out)
    core_shares(a.jobs)
    data = race_data(a)
    split = load_split(data, "test")
    views = None
    if a.support_views:
        from fsmtl.eval.evaluate import support_views_for
        from fsmtl.train.presets import PRESETS

        views = support_views_for(dict(PRESETS[a.preset]), tuple(split.images.shape[1:]), a.support_views)
    title = (f"Omniglot {a.ways}-way {a.shots}-shot within one test alphabet, {a.tasks} tasks; "
             f"{a.minutes:g} min a run, --jobs {a.jobs}")  # fmt: skip
    seeds: dict[str, list[list[dict[str, Any]]]] = {}
    runs_out: list[dict[str, Any]] = []

    def phase(jobs: list[tuple[str, int]]) -> None:
        run_jobs(jobs, a, data)
        for method, seed in jobs:
            run = a.out / "runs" / f"{method}-s{seed}"
            print(f"  scoring {method} seed {seed}", flush=True)
            pts = score_run(method, run, split, views, a)
            seeds.setdefault(method, []).append(pts)
            runs_out.append({"method": method, "seed": seed, "run": str(run),
                             "points": [{k: v for k, v in p.items() if k != "per_task"} for p in pts]})  # fmt: skip

    def save(**extra: Any) -> dict[str, Any]:
        curves = {m: mean_curve(r) for m, r in seeds.items()}
        finals = {m: [r[-1]["err"] for r in rs] for m, rs in seeds.items()}
        steps = {m: [r[-1]["step"] for r in rs] for m, rs in seeds.items()}
        rows, speed = summarize(curves, finals, steps) if curves else ([], [])
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
        write_results(path, "race", config, rows, "cpu", runs=runs_out, curves=curves, speedup=speed,
                      skipped=skipped, data=str(data), **extra)  # fmt: skip
        return {"rows": rows, "speed": speed, "curves": curves}

    try:
        phase([(m, 0) for m in a.methods_list])
        first = sorted(a.methods_list, key=lambda m: seeds[m][-1][-1]["err"])
        lead = first[: a.lead]
        phase([(m, s) for s in range(1, a.seeds) for m in lead])
    except (KeyboardInterrupt, Exception):
        if seeds:
            save(partial=True)
            print(f"wrote {path} (partial: {sum(len(v) for v in seeds.values())} runs scored)", file=sys.stderr)
        raise
    out = save(lead=lead)
    png = plot_race(out["curves"], seeds, path.with_suffix(".png"), title)
    save(lead=lead, plot=str(png))
    print(format_table(out["rows"], ["method", "seeds", "steps", "final_err", "final_ci95", "seed_sd", "best_err",
                                     "best_at_min", "min_to_mtl_final", "min_to_mtl_final_note"]))  # fmt: skip
    if out["speed"]:
        print(format_table(out["speed"], ["method", "bar_err", "other_min", "mtl_min", "speedup", "note"]))
    print(f"wrote {path} and {png}")
    return 0


if __name__ == "__main__":
    from fsmtl.core.cli import run_stage_main

    sys.exit(run_stage_main(main, sys.argv[1:]))
