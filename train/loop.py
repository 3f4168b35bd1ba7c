"""The training step and epoch: one forward for all T tasks under autocast, no host sync per step."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from fsmtl.models import set_train_step
from fsmtl.train.algorithms import Algorithm
from fsmtl.train.shape import StepShape


class TrainNet(nn.Module):
    """Backbone + global head matrix, with the algorithm's loss inside ``forward`` so that
    DistributedDataParallel sees every trained parameter in one call.

    ``forward(images float [B,C,H,W], global_class int64 [B], label int64 [B]) -> (loss, acc)``.
    """

    def __init__(self, backbone: nn.Module, heads: Tensor, algorithm: Algorithm, shape: StepShape) -> None:
        super().__init__()
        self.backbone = backbone
        if algorithm.uses_heads:
            self.heads = nn.Parameter(heads)
        else:  # an episodic method trains no head; keep an empty [0, D] tensor for the checkpoint
            self.register_buffer("heads", heads[:0].clone())
        self.algorithm = algorithm
        self.shape = shape

    def forward(self, images: Tensor, global_class: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        if self.algorithm.step is not None:  # e.g. MAML: adapts the backbone itself per task
            return self.algorithm.step(self.backbone, self.heads, images, global_class, label, self.shape)
        return self.algorithm.loss(self.backbone(images), self.heads, global_class, label, self.shape)


@dataclass
class StepTools:
    """What a step needs besides the batch (built once per run)."""

    net: nn.Module  # TrainNet, possibly compiled and/or wrapped in DDP
    backbone: nn.Module  # the raw backbone (for DropBlock's step counter)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16 only
    amp_dtype: torch.dtype | None  # None: fp32
    device: torch.device
    grad_clip: float
    # DropBlock's ramp counts what the seed's counted, one backbone forward per task: at step s it
    # reads s * ramp_per_step + ramp_offset (tasks a step on all ranks; validation tasks run so far)
    ramp_per_step: int = 1
    ramp_offset: int = 0


def train_step(tools: StepTools, batch: Any, step: int) -> tuple[Tensor, Tensor]:
    """One optimizer step on one TaskBatch; returns detached (loss, acc) device scalars (no sync)."""
    set_train_step(tools.backbone, step * tools.ramp_per_step + tools.ramp_offset)
    with torch.autocast(tools.device.type, dtype=tools.amp_dtype or torch.float32, enabled=tools.amp_dtype is not None):
        loss, acc = tools.net(batch.images, batch.global_class, batch.label)
    if tools.scaler is not None:
        tools.scaler.scale(loss).backward()
        if tools.grad_clip > 0:
            tools.scaler.unscale_(tools.optimizer)  # clip the true gradients, not the scaled ones
    else:
        loss.backward()
    if tools.grad_clip > 0:
        nn.utils.clip_grad_norm_(tools.net.parameters(), tools.grad_clip)
    if tools.scaler is not None:
        tools.scaler.step(tools.optimizer)
        tools.scaler.update()
    else:
        tools.optimizer.step()
    tools.optimizer.zero_grad(set_to_none=True)
    return loss.detach(), acc.detach()


@dataclass
class EpochStats:
    loss: float
    acc: float
    steps: int
    seconds: float
    data_seconds: float  # host time spent waiting in next(loader)
    nonfinite_step: int | None  # first step whose loss was NaN/inf
    stopped: bool  # a budget (time) ended the epoch early


def combine_stats(first: dict[str, Any] | None, then: EpochStats) -> EpochStats:
    """The statistics of an epoch run in two parts (stopped mid-epoch, then resumed): step-weighted
    means of loss and accuracy, summed steps and times. ``first`` is ``asdict`` of the first part."""
    if not first:
        return then
    steps = int(first["steps"]) + then.steps

    def mean(key: str) -> float:
        return (float(first[key]) * int(first["steps"]) + getattr(then, key) * then.steps) / max(steps, 1)

    return EpochStats(mean("loss"), mean("acc"), steps, float(first["seconds"]) + then.seconds,
                      float(first["data_seconds"]) + then.data_seconds, then.nonfinite_step, then.stopped)  # fmt: skip


def _alone(flags: list[bool]) -> list[bool]:
    return flags


def train_epoch(
    tools: StepTools, loader: Iterator[Any], start_step: int, n_steps: int, log_every: int,
    should_stop: Callable[[], bool], on_log: Callable[[int, float], None],
    agree: Callable[[list[bool]], list[bool]] | None = None,
    before_step: Callable[[int], None] | None = None,
) -> EpochStats:
    """Run up to ``n_steps`` steps. The host reads device values only every ``log_every`` steps
    (running loss, the first non-finite step) and then also asks ``should_stop()``; a single process
    (``agree`` None) asks ``should_stop()`` after every step, a host-only check.

    ``agree(flags) -> flags`` ORs boolean flags over the ranks of a distributed run (one
    all-reduce; None: one process); every rank calls it at the same steps, so a NaN or a stop request seen by one rank
    ends the epoch on all of them at the same step (none is left waiting in a collective).
    ``before_step(step)``, when given, runs on the host before each step (the budget schedule sets
    the learning rate there)."""
    d = tools.device
    sums = torch.zeros(2, dtype=torch.float32, device=d)
    first_bad = torch.full((), -1, dtype=torch.int64, device=d)
    t_start, data_s, done = time.perf_counter(), 0.0, 0
    alone, agree = agree is None, agree or _alone
    for i in range(n_steps):
        t0 = time.perf_counter()
        batch = next(loader)
        data_s += time.perf_counter() - t0
        if before_step is not None:
            before_step(start_step + i)
        loss, acc = train_step(tools, batch, start_step + i)
        sums += torch.stack([loss.float(), acc.float()])
        bad_now = (~torch.isfinite(loss)) & (first_bad < 0)
        first_bad = torch.where(bad_now, torch.full_like(first_bad, start_step + i), first_bad)
        done = i + 1
        # one process: should_stop() reads only the host clock and flags, so a time budget or a
        # signal is heard after every step, not only at the next log boundary (ranks must agree)
        if done % log_every == 0 or done == n_steps or (alone and should_stop()):
            bad, running = int(first_bad), sums[0].item() / done  # the one host sync
            any_bad, stop = agree([bad >= 0, done < n_steps and should_stop()])
            if any_bad:  # -1: another rank's loss went bad
                return EpochStats(float("nan"), float("nan"), done, time.perf_counter() - t_start, data_s, bad, True)
            on_log(done, running)
            if stop:
                break
    mean = (sums / max(done, 1)).tolist()
    stopped = done < n_steps
    return EpochStats(mean[0], mean[1], done, time.perf_counter() - t_start, data_s, None, stopped)
