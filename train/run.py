"""``train(cfg)``: the whole run -- setup, the epoch loop, validation, checkpoints, budgets."""

from __future__ import annotations

import os
import secrets
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from fsmtl.core.device import CLI_ARGS, autocast_dtype, precision_name, resolve_device
from fsmtl.core.errors import FsmtlError
from fsmtl.core.fileio import FileLock
from fsmtl.train import checkpoint as ck
from fsmtl.train.algorithms import get_algorithm
from fsmtl.train.shape import StepShape
from fsmtl.train.config import TrainConfig
from fsmtl.train.distributed import (
    DistInfo, any_rank, any_rank_flags, broadcast_float, dist_info_from_env, gather_objects, init_distributed,
    process_group_backend,
)
from fsmtl.train.loop import StepTools, TrainNet, combine_stats, train_epoch
from fsmtl.train.mtl import init_heads
from fsmtl.train.budget import Budget, budget_factor
from fsmtl.train.optim import (
    build_optimizer, build_scheduler, resumed_cosine_length, scheduler_step, set_cosine_length, set_lr_factor,
    sync_scheduler_lr, upgrade_scheduler_state,
)
from fsmtl.train.runlog import RunLog, peak_memory_mb
from fsmtl.train.signals import StopRequest
from fsmtl.train.setup import (
    Data, build_backbone, build_loader, load_data, model_kwargs_for,
    seed_everything,
)
from fsmtl.train.validate import ValSettings, make_validator


@dataclass
class Progress:
    """Where the run is; saved in checkpoints."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed optimizer steps
    best_val_acc: float = -1.0  # -1: nothing validated yet
    epochs_since_best: int = 0
    epoch_step: int = 0  # steps done in the unfinished epoch (a run stopped mid-epoch); 0 at boundaries
    partial: dict[str, Any] | None = None  # that unfinished epoch's statistics (``asdict(EpochStats)``)
    wall_s: float = 0.0  # training wall time of earlier invocations (resumes add up)
    budget_frac: float = 0.0  # the budget scheduler's fraction of the budget spent (train.budget)


@dataclass
class TrainingRun:
    cfg: TrainConfig
    dist: DistInfo
    device: torch.device
    amp_dtype: torch.dtype | None
    data: Data
    net: TrainNet
    tools: StepTools
    scheduler: Any
    loader: Any
    validate: Callable[[torch.nn.Module], dict] | None
    log: RunLog
    progress: Progress
    steps_per_epoch: int  # cfg.steps_per_epoch(world size)
    cosine_length: int | None = None  # the cosine schedule's length in effect (None: another scheduler)
    lock: FileLock | None = None  # RUN/.fsmtl-lock, held by rank 0 while the run lives (ck.lock_run)
    run_id: str = field(default_factory=lambda: secrets.token_hex(8))  # this run's identity (a resume keeps it)


def _claim_out(cfg: TrainConfig, dist: DistInfo) -> FileLock | None:
    """Make this run the owner of ``cfg.out`` before anything there changes.

    Rank 0 locks it (another ``fsmtl train`` on it fails here, touching nothing); then an --out
    that holds a run is refused unless resumed or overwritten, and the temporaries of a killed
    run's atomic writes are removed. Returns the lock (None on other ranks).
    """
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise FsmtlError(f"--out {cfg.out}: is a file (expected a run directory, or a path to create one at)")
    lock = ck.lock_run(cfg.out) if dist.is_main else None
    try:
        if not cfg.resume and not cfg.overwrite:
            left = ck.previous_run_files(cfg.out)
            if left:
                raise FsmtlError(
                    f"{cfg.out}: already holds a run ({left[0]}); continue it with --resume {cfg.out}, "
                    f"start over with --overwrite, or pick another --out"
                )
        if lock is not None:  # no other fsmtl train can be writing there now
            ck.remove_run_temporaries(cfg.out)
    except BaseException:
        _release(lock)
        raise
    return lock


def _release(lock: FileLock | None) -> None:
    if lock is not None:
        lock.release()


def _build(cfg: TrainConfig, loader_factory: Callable[..., Any] | None) -> TrainingRun:
    cfg.check()
    if cfg.data:  # stored absolute, so eval and --resume work from any directory
        cfg = replace(cfg, data=os.path.abspath(cfg.data))
    if cfg.channels_last and cfg.optimizer in ("sgdp", "adamp"):
        print(f"fsmtl train: --optimizer {cfg.optimizer}: torch-optimizer reshapes parameters with view(), which "
              "channels_last weights do not allow; training with --no-channels-last", file=sys.stderr)  # fmt: skip
        cfg = replace(cfg, channels_last=False)
    dist = dist_info_from_env()
    device = resolve_device(cfg.device, CLI_ARGS, dist.local_rank)
    amp_dtype = autocast_dtype(cfg.precision, device)
    data = load_data(cfg)
    algorithm = get_algorithm(cfg.algorithm)
    init_distributed(dist, device)
    seed_everything(cfg.seed)
    backbone, dim = build_backbone(cfg, data, device)
    heads = init_heads(data.meta["n_train_classes"], dim, cfg.train_ways, torch.Generator().manual_seed(cfg.seed))
    shape = StepShape(cfg.meta_batch_size, cfg.train_ways, cfg.train_shots, cfg.train_queries, cfg.norm_train_features)
    net = TrainNet(backbone, heads.to(device), algorithm, shape)
    optimizer = build_optimizer([p for p in net.parameters() if p.requires_grad], cfg, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    stepper: torch.nn.Module = net
    if dist.uses_process_group:
        from torch.nn.parallel import DistributedDataParallel as DDP

        stepper = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:  # after DDP, so that dynamo splits graphs at DDP's gradient buckets
        stepper = torch.compile(stepper)
    tools = StepTools(stepper, backbone, optimizer, scaler, amp_dtype, device, cfg.grad_clip,
                      ramp_per_step=cfg.meta_batch_size * dist.world_size)
    try:
        loader = build_loader(cfg, data, device, amp_dtype, dist.rank, loader_factory)
    except ImportError as e:
        raise FsmtlError(f"--pipeline {cfg.pipeline}: the back end does not import: {e}") from None
    validate = None
    if data.val is not None and dist.is_main:
        vs = ValSettings(cfg.test_ways, cfg.test_shots, cfg.test_queries, cfg.val_epoch_length,
                         cfg.val_batch_tasks, cfg.seed, cfg.val_within_group, cfg.test_C)
        validate = make_validator(data.val, data.mean, data.std, vs, device, amp_dtype)
    log = RunLog(Path(cfg.out), enabled=dist.is_main)
    scheduler = build_scheduler(optimizer, cfg)
    return TrainingRun(cfg, dist, device, amp_dtype, data, net, tools, scheduler, loader, validate, log, Progress(),
               cfg.steps_per_epoch(dist.world_size), cfg.cosine_length() if cfg.scheduler == "cosine" else None)


def _state(run: TrainingRun, wall_s: float) -> dict[str, Any]:
    """The checkpoint contents (see docs/training.md); every rank's RNG and loader state included."""
    mine = {**ck.capture_rng(run.device), "loader": run.loader.state_dict()}
    ranks = gather_objects(mine, run.dist)
    p = run.progress
    return {
        "model_name": run.cfg.model, "model_kwargs": model_kwargs_for(run.cfg),
        "model": run.net.backbone.state_dict(), "heads": run.net.heads.detach().cpu(),
        "optimizer": run.tools.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "scaler": run.tools.scaler.state_dict() if run.tools.scaler is not None else {},
        "rng": {**ranks[0], "ranks": ranks}, "epoch": p.epoch, "step": p.step,
        "best_val_acc": p.best_val_acc, "epochs_since_best": p.epochs_since_best,
        "epoch_step": p.epoch_step, "partial": p.partial, "wall_s": wall_s,
        "config": run.cfg.to_dict(), "data_meta": run.data.meta, "epoch_unit": "tasks",
        "cosine_length": run.cosine_length, "budget_frac": p.budget_frac, "run_id": run.run_id,
    }  # fmt: skip


def _resume(run: TrainingRun) -> None:
    """Load RUN/checkpoints/last.pt into the built run (checks model and data first)."""
    path = ck.checkpoint_dir(run.cfg.resume) / "last.pt"
    c = ck.load_checkpoint(path)
    ck.check_resume_matches(c, path, run.cfg.model, model_kwargs_for(run.cfg), run.data.meta)
    ck.check_checkpoint_belongs(c, path, Path(run.cfg.resume))
    run.run_id = str(c.get("run_id") or run.run_id)
    try:
        run.net.backbone.load_state_dict(c["model"])
        with torch.no_grad():
            run.net.heads.copy_(c["heads"].to(run.device))
        run.tools.optimizer.load_state_dict(c["optimizer"])
        run.scheduler.load_state_dict(upgrade_scheduler_state(c["scheduler"], run.scheduler))
    except (RuntimeError, ValueError, KeyError) as e:
        raise FsmtlError(f"{path}: does not fit this run's model/optimizer ({str(e).splitlines()[0]})") from None
    if run.tools.scaler is not None and c["scaler"]:
        run.tools.scaler.load_state_dict(c["scaler"])
    ranks = c["rng"]["ranks"]
    mine = ranks[run.dist.rank] if run.dist.rank < len(ranks) else None
    if len(ranks) != run.dist.world_size and int(c.get("epoch_step", 0)):
        raise FsmtlError(f"{path}: stopped {c['epoch_step']} steps into an epoch with {len(ranks)} rank(s); finish that epoch "
                         f"with {len(ranks)} (this run has {run.dist.world_size}), then resume with any number")  # fmt: skip
    if len(ranks) != run.dist.world_size:  # said by rank 0, the one that logs
        run.log.message(
            f"resume: the checkpoint was written by {len(ranks)} rank(s), this run has {run.dist.world_size}: "
            f"a step now takes {run.dist.world_size} x {run.cfg.meta_batch_size} tasks (was {len(ranks)} x), "
            + ("ranks beyond the checkpoint's start their task streams fresh; " if run.dist.world_size > len(ranks) else "")
            + "the run continues, but not as an uninterrupted one would"
        )
    if run.cfg.pipeline == "reference":
        run.log.message("resume: the reference pipeline (the seed's DataLoader) is not exactly resumable: the run "
                        "continues with fresh tasks, not the ones an uninterrupted run would have drawn")  # fmt: skip
    if mine is not None:
        run.loader.load_state_dict(mine["loader"])
        ck.restore_rng(mine, run.device)
    run.progress = Progress(int(c["epoch"]), int(c["step"]), float(c["best_val_acc"]), int(c["epochs_since_best"]),
                            int(c.get("epoch_step", 0)), c.get("partial"), float(c.get("wall_s", 0.0)),
                            float(c.get("budget_frac") or 0.0))  # fmt: skip
    if run.progress.epoch_step >= run.steps_per_epoch:
        raise FsmtlError(
            f"{path}: stopped {run.progress.epoch_step} steps into an epoch, but epochs of --epoch-length "
            f"{run.cfg.epoch_length} tasks at {run.cfg.meta_batch_size} x {run.dist.world_size} tasks a step have "
            f"{run.steps_per_epoch} steps (keep the run's --epoch-length {ck.upgrade_stored_config(c)[0]['epoch_length']}, "
            f"--meta-batch-size {c['config']['meta_batch_size']} and number of ranks)")
    if run.cosine_length is not None:  # the run's own length, or stretched to a larger --max-epochs
        stored = c.get("cosine_length") or TrainConfig.from_dict(ck.upgrade_stored_config(c)[0]).cosine_length()
        run.cosine_length = resumed_cosine_length(run.cfg.cosine_epochs, int(stored), run.cfg.max_epochs)
        set_cosine_length(run.scheduler, run.cosine_length)
    sync_scheduler_lr(run.scheduler)  # the lr of the (possibly stretched) schedule at this epoch


def _validate(run: TrainingRun) -> dict | None:
    res = None
    if run.validate is not None:
        run.net.backbone.eval()
        res = run.validate(run.net.backbone)
        run.net.backbone.train()
    acc = broadcast_float(None if res is None else res["acc"], run.dist, run.device)
    return res if res is not None else ({"acc": acc, "ci95": None, "head": None} if acc is not None else None)


def _stop_reason(run: TrainingRun, deadline: float | None, stop: StopRequest) -> str | None:
    """Why the run should end after this epoch, or None."""
    cfg, p = run.cfg, run.progress
    if any_rank(stop.requested, run.dist, run.device):
        return f"{stop.signal_name or 'a stop signal on another rank'} received"
    if cfg.max_epochs is not None and p.epoch >= cfg.max_epochs:
        return f"max_epochs={cfg.max_epochs} reached"
    if cfg.max_steps is not None and p.step >= cfg.max_steps:
        return f"max_steps={cfg.max_steps} reached"
    if deadline is not None and any_rank(time.monotonic() >= deadline, run.dist, run.device):
        return f"max_minutes={cfg.max_minutes} reached"
    if p.epoch_step:  # stopped mid-epoch for a reason the checks above no longer see
        return f"stopped {p.epoch_step} steps into epoch {p.epoch + 1}"
    if run.validate is not None or run.dist.enabled:
        if p.epochs_since_best >= cfg.early_stop_patience:
            n = cfg.early_stop_patience
            return f"early stop: no validation improvement for {n} epoch{'s' if n != 1 else ''}"
    return None


def _epoch_record(run: TrainingRun, stats: Any, val: dict | None, t_run: float, lr: float) -> dict[str, Any]:
    images = stats.steps * run.cfg.meta_batch_size * run.cfg.train_ways * (run.cfg.train_shots + run.cfg.train_queries)
    return {
        "epoch": run.progress.epoch, "step": run.progress.step, "train_loss": stats.loss, "train_acc": stats.acc,
        "val_acc": None if val is None else val["acc"], "val_ci95": None if val is None else val["ci95"],
        "val_head": None if val is None else val["head"], "best_val_acc": _best(run.progress),
        "lr": lr,  # the rate this epoch trained with (the scheduler has stepped since)
        "images_per_s": images * run.dist.world_size / max(stats.seconds, 1e-9),
        "data_wait_frac": stats.data_seconds / max(stats.seconds, 1e-9),
        "peak_mem_mb": peak_memory_mb(run.device), "epoch_s": stats.seconds,
        "wall_s": run.progress.wall_s + time.monotonic() - t_run,
    }  # fmt: skip


def _after_epoch(run: TrainingRun, stats: Any, t_run: float) -> dict[str, Any]:
    """Validate, schedule, log, checkpoint (last.pt; best.pt on improvement)."""
    p = run.progress
    t_val = time.perf_counter()
    val = _validate(run)
    val_s = time.perf_counter() - t_val
    improved = val is not None and val["acc"] > p.best_val_acc
    if improved:
        p.best_val_acc, p.epochs_since_best = float(val["acc"]), 0
    elif val is not None:
        p.epochs_since_best += 1
    lr = float(run.tools.optimizer.param_groups[0]["lr"])
    scheduler_step(run.scheduler, None if val is None else val["acc"])
    record = {**_epoch_record(run, stats, val, t_run, lr), "val_s": val_s}
    run.log.epoch(record)
    state = _state(run, record["wall_s"])  # collective in DDP: every rank takes part
    if run.dist.is_main:
        d = ck.checkpoint_dir(run.cfg.out)
        if improved or val is None:
            ck.save_checkpoint(d / "best.pt", state)
        ck.save_checkpoint(d / "last.pt", state)
    return record


def _epoch_line(rec: dict[str, Any]) -> str:
    val = "n/a"
    if rec["val_acc"] is not None:
        ci = "" if rec["val_ci95"] is None else f" +- {100 * rec['val_ci95']:.2f}"
        val = f"{100 * rec['val_acc']:.2f}%{ci} ({rec['val_head']})"
    return (
        f"epoch {rec['epoch']} step {rec['step']}: loss {rec['train_loss']:.4f} acc {100 * rec['train_acc']:.1f}% "
        f"val {val} lr {rec['lr']:.2e} {rec['images_per_s']:.0f} img/s data-wait {100 * rec['data_wait_frac']:.1f}%"
    )


def _best(p: Progress) -> float | None:
    return p.best_val_acc if p.best_val_acc >= 0 else None


def _budget_spent(cfg: TrainConfig, p: Progress, validates: bool) -> str | None:
    if validates and not p.epoch_step and p.epoch and p.epochs_since_best >= cfg.early_stop_patience:
        return (f"early stopping already ended this run ({p.epochs_since_best} epochs without a better validation "
                f"accuracy, patience {cfg.early_stop_patience}); raise --early-stop-patience to train on")
    if cfg.max_epochs is not None and p.epoch >= cfg.max_epochs:
        return f"--max-epochs {cfg.max_epochs} already reached at epoch {p.epoch}; raise it to train on"
    if cfg.max_steps is not None and p.step >= cfg.max_steps:
        return f"--max-steps {cfg.max_steps} already reached at step {p.step}; raise it (or pass --max-steps none) to train on"
    return None


def _final_validation(run: TrainingRun, stats: Any, t_run: float) -> None:
    """A budget (--max-minutes, --max-steps) stopped the run mid-epoch: validate the final weights,
    log them (``"final": true``, the unfinished epoch's statistics) and keep them as best.pt when
    they are the best so far. Neither early stopping's patience nor the epoch-level scheduler moves,
    and validation draws on no training random stream, so --resume still finishes the epoch as an
    uninterrupted run would (its own validation then compares with this one's accuracy). Without
    validation :func:`_save_partial` keeps the final weights as best.pt."""
    p = run.progress
    if run.validate is None and not run.dist.enabled:
        return
    t_val = time.perf_counter()
    val = _validate(run)
    if val is None:
        return
    val_s = time.perf_counter() - t_val
    improved = val["acc"] > p.best_val_acc
    if improved:
        p.best_val_acc = float(val["acc"])
    lr = float(run.tools.optimizer.param_groups[0]["lr"])
    record = {**_epoch_record(run, stats, val, t_run, lr), "val_s": val_s, "final": True, "epoch_step": p.epoch_step}
    run.log.epoch(record)
    run.log.message(_epoch_line(record).replace(f"epoch {p.epoch} ", f"epoch {p.epoch + 1} (stopped at {p.epoch_step} of {run.steps_per_epoch} steps) ", 1))
    if improved:
        state = _state(run, record["wall_s"])  # collective in DDP
        if run.dist.is_main:
            ck.save_checkpoint(ck.checkpoint_dir(run.cfg.out) / "best.pt", state)


def _save_partial(run: TrainingRun, t_run: float, as_best: bool = False) -> None:
    """Checkpoint a run stopped mid-epoch: last.pt (and best.pt too when ``as_best``), no validation,
    no scheduler step, no metrics line, so that resuming finishes the epoch exactly as an
    uninterrupted run would have."""
    p = run.progress
    state = _state(run, p.wall_s + time.monotonic() - t_run)  # collective in DDP
    if run.dist.is_main:
        d = ck.checkpoint_dir(run.cfg.out)
        if as_best:
            ck.save_checkpoint(d / "best.pt", state)
        ck.save_checkpoint(d / "last.pt", state)
    run.log.message(f"epoch {p.epoch + 1}: stopped after {p.epoch_step} of {run.steps_per_epoch} steps (step {p.step}); "
                    "last.pt holds the unfinished epoch and --resume finishes it")  # fmt: skip


def _budget_schedule(run: TrainingRun, deadline: float | None) -> Callable[[int], None] | None:
    """``before_step(step)`` of the budget scheduler: the lr from the fraction of the budget spent
    (None for the epoch-level schedulers). The fraction is kept in ``run.progress.budget_frac``."""
    cfg, p = run.cfg, run.progress
    if cfg.scheduler != "budget":
        return None
    seconds = None if cfg.max_minutes is None else 60.0 * cfg.max_minutes
    budget = Budget(cfg.max_steps, cfg.max_epochs, seconds, run.steps_per_epoch)
    start = p.budget_frac

    def before_step(step: int) -> None:
        elapsed = 0.0 if deadline is None or seconds is None else seconds - (deadline - time.monotonic())
        p.budget_frac = budget.fraction(step + 1, elapsed, start)  # spent once this step is done
        set_lr_factor(run.scheduler, budget_factor(p.budget_frac, cfg.warmup_frac, cfg.lr_floor))

    return before_step


def _snapshots(run: TrainingRun, t_run: float) -> Callable[[int], None] | None:
    """``before_step(step)`` saving RUN/snapshots/t<seconds>.pt every ``--snapshot-minutes`` of
    training time: this invocation's wall time since ``t_run`` plus earlier invocations', minus the
    time spent writing snapshots (and the validations, which stop nothing here: they count, so time-
    to-accuracy runs train with --val-split none). The file is a full checkpoint (fsmtl eval takes it)
    whose ``wall_s`` is that training time."""
    cfg, p = run.cfg, run.progress
    if cfg.snapshot_minutes is None:
        return None
    if run.dist.enabled:
        raise FsmtlError("--snapshot-minutes: one process only (ranks would decide by their own clocks)")
    every, paused = 60.0 * cfg.snapshot_minutes, [0.0]
    folder = Path(cfg.out) / "snapshots"
    folder.mkdir(parents=True, exist_ok=True)
    next_at = [(int(p.wall_s // every) + 1) * every]

    def before_step(step: int) -> None:
        t0 = time.monotonic()
        trained = p.wall_s + t0 - t_run - paused[0]
        if trained >= next_at[0]:
            state = {**_state(run, trained), "snapshot_step": step}  # p.step counts whole epochs' steps only
            ck.save_checkpoint(folder / f"t{int(round(trained)):06d}.pt", state)
            next_at[0] = (int(trained // every) + 1) * every
            paused[0] += time.monotonic() - t0

    return before_step


def _chain(*hooks: Callable[[int], None] | None) -> Callable[[int], None] | None:
    """One ``before_step`` calling each given hook in order (None when none is given)."""
    live = [h for h in hooks if h is not None]
    if not live:
        return None
    if len(live) == 1:
        return live[0]

    def before_step(step: int) -> None:
        for h in live:
            h(step)

    return before_step


def _run_epochs(run: TrainingRun, deadline: float | None, stop: StopRequest) -> str:
    cfg, p, t_run = run.cfg, run.progress, time.monotonic()
    spent = _budget_spent(cfg, p, run.data.val is not None or run.dist.enabled)
    if spent:
        return spent
    before_step = _chain(_budget_schedule(run, deadline), _snapshots(run, t_run))
    while True:
        remaining = run.steps_per_epoch - p.epoch_step
        n = remaining if cfg.max_steps is None else min(remaining, cfg.max_steps - p.step)
        # the seed's DropBlock counter also advanced once per validation task (all ranks agree: data.val)
        run.tools.ramp_offset = p.epoch * cfg.val_epoch_length if run.data.val is not None else 0
        bar = tqdm(total=run.steps_per_epoch, initial=p.epoch_step, desc=f"epoch {p.epoch + 1}", leave=False,
                   disable=True if not (cfg.progress and run.dist.is_main) else None)  # None: off unless a terminal
        first = p.epoch_step

        def on_log(done: int, loss: float) -> None:
            bar.update(first + done - bar.n)
            bar.set_postfix(loss=f"{loss:.4f}")

        def out_of_time() -> bool:  # this rank's view; train_epoch agrees it over the ranks
            stop.announce_once()
            return (deadline is not None and time.monotonic() >= deadline) or stop.requested

        def agree(flags: list[bool]) -> list[bool]:
            return any_rank_flags(flags, run.dist, run.device)

        stats = train_epoch(run.tools, run.loader, p.step, n, cfg.log_every, out_of_time, on_log,
                            agree if run.dist.enabled else None, before_step)
        bar.close()
        if stats.nonfinite_step is not None:
            where = f"step {stats.nonfinite_step}" if stats.nonfinite_step >= 0 else f"another rank, by step {p.step + stats.steps}"
            raise FsmtlError(
                f"{where}: the training loss became NaN/inf; stopped without writing "
                f"a checkpoint (the last good one is {ck.checkpoint_dir(cfg.out) / 'last.pt'}, if any)"
            )
        p.step += stats.steps
        whole = combine_stats(p.partial, stats)
        if p.epoch_step + stats.steps >= run.steps_per_epoch:
            p.epoch, p.epoch_step, p.partial = p.epoch + 1, 0, None
            rec = _after_epoch(run, whole, t_run)
            run.log.message(_epoch_line(rec))
        else:  # cut short by --max-steps, --max-minutes or a signal
            p.epoch_step, p.partial = p.epoch_step + stats.steps, asdict(whole)
            budget = not any_rank(stop.requested, run.dist, run.device)
            if budget:  # a budget ended it: validate the final weights
                _final_validation(run, whole, t_run)
            # without validation best.pt is the latest weights: a budget's annealed end included
            _save_partial(run, t_run, as_best=budget and run.data.val is None)
        reason = _stop_reason(run, deadline, stop)
        if reason is not None:
            return reason


def _resume_hint(cfg: TrainConfig, reason: str, stop: StopRequest, torchrun: bool = False) -> str | None:
    """How to continue a run that a budget or a signal ended (None after early stopping)."""
    launcher = "<the same torchrun command> -m fsmtl.train" if torchrun else "fsmtl train"
    base = f"{launcher} --resume {cfg.out}"
    if reason.startswith("max_epochs"):
        return f"{base} --max-epochs N (N > {cfg.max_epochs})"
    if reason.startswith("max_steps"):
        return f"{base} --max-steps N (N > {cfg.max_steps}; or none)"
    if stop.requested or reason.startswith(("max_minutes", "stopped")):
        return base + ("" if cfg.max_minutes is None else f" (--max-minutes counts anew: {cfg.max_minutes:g})")
    return None


def build_run(cfg: TrainConfig, loader_factory: Callable[..., Any] | None = None) -> TrainingRun:
    """Check ``cfg`` and build every part of the run (loading ``cfg.resume`` if set); no step yet.

    Rank 0 holds the lock of the run folder ``cfg.out`` from here until :func:`fit` returns (or
    the process ends), so a second ``fsmtl train`` on it fails at once, before changing anything.

    Args:
        loader_factory: replaces ``pipelines.loader.build_task_loader`` (same signature); tests only.

    Raises:
        FsmtlError: any bad setting, data or resume checkpoint.
    """
    lock = _claim_out(cfg.check(), dist_info_from_env())
    try:
        run = _build(cfg, loader_factory)
    except BaseException:
        _release(lock)
        raise
    run.lock = lock
    try:
        if cfg.resume:
            _resume(run)
    except BaseException:
        run.loader.close()
        _release(lock)
        raise
    return run


def fit(run: TrainingRun) -> dict[str, Any]:
    """Train ``run`` until a budget, early stopping or an error ends it; returns a summary.

    Releases the run folder's lock at the end.

    Raises:
        FsmtlError: when the loss becomes NaN/inf (naming the step; no checkpoint is overwritten).
    """
    cfg = run.cfg
    try:
        run.log.start({**cfg.to_dict(), "run_id": run.run_id}, cfg.wandb, run.progress.epoch if cfg.resume else None)
        deadline = None if cfg.max_minutes is None else time.monotonic() + 60.0 * cfg.max_minutes
        run.log.message(
            f"fsmtl train: {cfg.algorithm} {cfg.model} on {cfg.data} ({run.data.meta['n_train_classes']} classes), "
            f"device {run.device}, precision {precision_name(run.amp_dtype)}, pipeline {cfg.pipeline}, "
            f"ranks {run.dist.world_size}"
            + (f" (DDP over {process_group_backend(run.device)})" if run.dist.uses_process_group else "")
            + f", from epoch {run.progress.epoch}"
            + (f" (+{run.progress.epoch_step} steps)" if run.progress.epoch_step else "")
            + (f", cudnn.benchmark {torch.backends.cudnn.benchmark}, tf32 {torch.backends.cuda.matmul.allow_tf32}"
               if run.device.type == "cuda" else "")
        )
        split = cfg.validation_split()
        if run.data.val is None:
            why = "--val-split none" if split is None else f"{cfg.data} has no '{split}' split"
            run.log.message(f"fsmtl train: {why}: no validation, so no early stopping and no "
                            "plateau steps; best.pt is simply the latest weights (a budget's end included)")  # fmt: skip
        elif split == "test":
            run.log.message("fsmtl train: validating on the test split" + (" (--trainval, as the seed did)" if cfg.trainval else "")
                            + ": the test classes pick best.pt and drive the schedule, so its test accuracy is optimistic")  # fmt: skip
        elif cfg.trainval:
            run.log.message("fsmtl train: --trainval --val-split val: the val classes are also trained on, so validation is optimistic")
        with StopRequest(announce=run.dist.is_main) as stop:
            reason = _run_epochs(run, deadline, stop)
        best = _best(run.progress)
        told = ("no validation yet" if run.data.val is not None else "no validation") if best is None else f"best val acc {100 * best:.2f}%"
        run.log.message(f"fsmtl train: stopped ({reason}); {told}")
        hint = _resume_hint(cfg, reason, stop, run.dist.uses_process_group)
        if hint:
            run.log.message(f"fsmtl train: continue with: {hint}")
        return {"reason": reason, "epoch": run.progress.epoch, "step": run.progress.step,
                "best_val_acc": best, "out": cfg.out, "signal": stop.signal_name,
                "validates": run.data.val is not None}
    finally:
        run.loader.close()
        run.log.finish()
        _release(run.lock)


def train(cfg: TrainConfig, loader_factory: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says (resuming ``cfg.resume`` exactly if set): ``fit(build_run(cfg))``."""
    return fit(build_run(cfg, loader_factory))
