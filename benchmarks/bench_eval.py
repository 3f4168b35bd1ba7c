"""``fsmtl bench eval``: the batched logistic-regression head against the seed's per-task sklearn loop.

Both start from the same raw features (float32 [T, ways, shots + queries, D], clustered: a random
centre per class plus Gaussian noise) and end with predicted query labels; both L2-normalise.
The seed's loop is one ``LogisticRegression(C=3, solver="lbfgs", max_iter=1000)`` fit per task on
the CPU; fsmtl fits every task of a batch at once on ``--device``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import numpy as np
import torch

from fsmtl.benchmarks.common import check_writable, device_name, format_table, median, positive_int, synchronize, time_runs, write_results
from fsmtl.core.cli import CliParser, plain_doc
from fsmtl.core.device import CLI_ARGS, resolve_device
def clustered_features(tasks: int, ways: int, per_class: int, dim: int, noise: float, seed: int) -> torch.Tensor:
    """float32 [tasks, ways, per_class, dim]: class centre N(0, I) plus noise * N(0, I) per image."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(tasks, ways, per_class, dim)
    for i in range(0, tasks, 250):  # in slices: bounded temporaries
        n = min(250, tasks - i)
        centre = torch.randn(n, ways, 1, dim, generator=g)
        out[i : i + n] = centre + noise * torch.randn(n, ways, per_class, dim, generator=g)
    return out


def split_tasks(feats: torch.Tensor, shots: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    t, ways, per, d = feats.shape
    support = feats[:, :, :shots].reshape(t, ways * shots, d).contiguous()
    query = feats[:, :, shots:].reshape(t, ways * (per - shots), d).contiguous()
    labels = torch.arange(ways).repeat_interleave(shots).expand(t, -1).contiguous()
    target = torch.arange(ways).repeat_interleave(per - shots)
    return support, labels, query, target


def sklearn_loop(support: np.ndarray, labels: np.ndarray, query: np.ndarray, C: float) -> np.ndarray:
    """The seed's test loop: per task, normalise, fit, predict. Returns int64 [T, Q].

    The first call also imports scikit-learn (~0.7 s here): time it after :func:`sklearn_warmup`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import normalize

    preds = np.empty(query.shape[:2], dtype=np.int64)
    for t in range(support.shape[0]):
        clf = LogisticRegression(C=C, solver="lbfgs", max_iter=1000)
        clf.fit(normalize(support[t]), labels[t])
        preds[t] = clf.predict(normalize(query[t]))
    return preds


def sklearn_warmup(support: np.ndarray, labels: np.ndarray, query: np.ndarray, C: float) -> None:
    """Import scikit-learn and fit one task, untimed: the timed loop then measures fits, not the
    one-time import (the batched head gets a warm-up call too)."""
    sklearn_loop(support[:1], labels[:1], query[:1], C)


def _check(a: argparse.Namespace) -> None:
    from fsmtl.core.errors import FsmtlError

    if a.ways < 2:
        raise FsmtlError(f"--ways: expected at least 2 classes a task, got {a.ways}")
    for name, ok, expected in (("C", a.C > 0 and np.isfinite(a.C), "a finite number > 0"),
                               ("tol", a.tol > 0 and np.isfinite(a.tol), "a finite number > 0"),
                               ("noise", a.noise >= 0 and np.isfinite(a.noise), "a finite number >= 0")):
        if not ok:
            raise FsmtlError(f"--{name}: expected {expected}, got {getattr(a, name)}")


def batched(
    support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, C: float, batch_tasks: int, tol: float = 1e-6
) -> torch.Tensor:
    """fsmtl's head through the public API, ``batch_tasks`` tasks per call. Returns int64 [T, Q]."""
    from fsmtl.models.heads import adapt

    return torch.cat([
        adapt(s, y, q, head="logreg", C=C, tol=tol)
        for s, y, q in zip(support.split(batch_tasks), labels.split(batch_tasks), query.split(batch_tasks))
    ])  # fmt: skip


def blas_info() -> dict[str, Any]:
    """The BLAS set-up that moves this benchmark (OpenBLAS kernel choice): environment variables and,
    where threadpoolctl imports, each loaded BLAS library's name, version, kernel and threads."""
    import os

    info: dict[str, Any] = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                                             "OMP_NUM_THREADS", "MKL_NUM_THREADS")}  # fmt: skip
    try:
        from threadpoolctl import threadpool_info

        info["libraries"] = [{k: p.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
                             for p in threadpool_info() if p.get("user_api") == "blas"]  # fmt: skip
    except Exception:  # noqa: BLE001 - optional detail
        pass
    return info


def _parser() -> argparse.ArgumentParser:
    p = CliParser(prog="fsmtl bench eval", description=plain_doc(__doc__))
    p.add_argument("--tasks", type=positive_int, default=2000, help="tasks (default 2000)")
    p.add_argument("--ways", type=positive_int, default=5, help="classes per task (default 5)")
    p.add_argument("--shots", type=positive_int, default=5, help="support features per class (default 5)")
    p.add_argument("--queries", type=positive_int, default=15, help="query features per class (default 15)")
    p.add_argument("--dim", type=positive_int, default=640, help="feature width (default 640, ResNet-12's)")
    p.add_argument("--noise", type=float, default=5.0, help="within-class noise (centres are N(0, I))")
    p.add_argument("--C", type=float, default=3.0, help="logistic regression C, both methods (default 3, the seed's)")
    p.add_argument("--tol", type=float, default=1e-4,
                   help="batched head's stopping tolerance on the gradient (default 1e-4, sklearn lbfgs's own; "
                        "fsmtl eval uses 1e-6)")
    p.add_argument("--batch-tasks", type=positive_int, default=None, help="default: 500 on CPU, all tasks on CUDA")
    p.add_argument("--device", type=device_name, default="cpu", help="device of the batched head: cpu (default), cuda[:N] or auto")
    p.add_argument("--runs", type=positive_int, default=3, help="timed runs of the batched head (median)")
    p.add_argument("--sklearn-tasks", type=positive_int, default=None, help="tasks for the sklearn loop (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic features (default 0)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", default=None, help="write the results here (default: not written)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    from fsmtl.benchmarks.limits import check_flags
    from fsmtl.core.device import check_fits

    _check(a)  # its own messages first ("at least 2 classes a task"), then the generic bounds
    check_flags(a, {"--tasks": 1, "--ways": 2, "--shots": 1, "--queries": 1, "--dim": 1, "--batch-tasks": 1,
                    "--runs": 1, "--sklearn-tasks": 1, "--seed": 0, "--threads": 1},
                {"--noise": (0.0, False), "--C": (0.0, True), "--tol": (0.0, True)})
    n = a.tasks * a.ways * (a.shots + a.queries)
    check_fits("--tasks/--ways/--shots/--queries/--dim", f"{n:,} float32 features of width {a.dim}", n * a.dim * 4, "cpu")
    if a.threads:
        torch.set_num_threads(a.threads)  # set here, in main, and recorded in the JSON's hardware
    device = resolve_device(a.device, CLI_ARGS)
    check_writable(a.json)  # now, not after the measuring
    bt = a.batch_tasks or (a.tasks if device.type == "cuda" else 500)
    feats = clustered_features(a.tasks, a.ways, a.shots + a.queries, a.dim, a.noise, a.seed)
    support, labels, query, target = split_tasks(feats, a.shots)
    del feats
    n_sk = min(a.sklearn_tasks or a.tasks, a.tasks)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a rare lbfgs ConvergenceWarning must not flood the table
        sklearn_warmup(support.numpy(), labels.numpy(), query.numpy(), a.C)
        t0 = time.perf_counter()
        sk_pred = sklearn_loop(support[:n_sk].numpy(), labels[:n_sk].numpy(), query[:n_sk].numpy(), a.C)
        sk_s = time.perf_counter() - t0

    s_dev, y_dev, q_dev = support.to(device), labels.to(device), query.to(device)
    times = time_runs(lambda: batched(s_dev, y_dev, q_dev, a.C, bt, a.tol), device, warmup=1, runs=a.runs)
    ours = batched(s_dev, y_dev, q_dev, a.C, bt, a.tol).cpu()
    synchronize(device)
    ours_s = median(times)

    sk_acc = float((torch.from_numpy(sk_pred) == target).double().mean()) * 100
    our_acc = float((ours == target).double().mean()) * 100
    our_acc_sub = float((ours[:n_sk] == target).double().mean()) * 100
    agree = float((ours[:n_sk] == torch.from_numpy(sk_pred)).double().mean()) * 100
    sk_total = sk_s * a.tasks / n_sk  # extrapolated only when --sklearn-tasks < --tasks
    rows: list[dict[str, Any]] = [
        {"method": "sklearn per-task loop (seed)", "device": "cpu", "tasks": n_sk, "seconds": sk_s,
         "tasks_per_s": n_sk / sk_s, "acc_pct": sk_acc, "speedup": 1.0},
        {"method": f"fsmtl batched logreg ({min(bt, a.tasks)} tasks a batch, tol {a.tol:g})", "device": str(device), "tasks": a.tasks, "seconds": ours_s,
         "tasks_per_s": a.tasks / ours_s, "acc_pct": our_acc, "speedup": sk_total / ours_s},
    ]  # fmt: skip
    print(format_table(rows, ["method", "device", "tasks", "seconds", "tasks_per_s", "acc_pct", "speedup"]))
    print(f"accuracy difference (fsmtl - sklearn, same {n_sk} tasks): {our_acc_sub - sk_acc:+.4f} points; "
          f"identical predictions on {agree:.3f}% of {n_sk * query.shape[1]} queries")  # fmt: skip
    config = {k: v for k, v in vars(a).items() if k != "json"} | {"batch_tasks": bt}
    write_results(a.json, "eval", config, rows, device, accuracy_difference_pct=our_acc_sub - sk_acc,
                  prediction_agreement_pct=agree, batched_runs_s=times, sklearn_tasks_timed=n_sk,
                  sklearn_seconds_for_all_tasks=sk_total, blas=blas_info())  # fmt: skip
    if a.json:
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
