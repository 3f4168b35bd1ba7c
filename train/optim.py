"""Optimizers and learning-rate schedulers by name, with the seed's defaults."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import nn

from fsmtl.core.errors import FsmtlError
from fsmtl.train.config import TrainConfig


def default_weight_decay(name: str) -> float:
    """The seed's weight decay: 0, except AdamW's 0.01."""
    return 0.01 if name == "adamw" else 0.0


def _torch_optimizer(name: str):
    """The torch-optimizer package, imported only for the optimizers that live there."""
    try:
        import torch_optimizer
    except ImportError as e:
        raise FsmtlError(f"--optimizer {name}: needs the torch-optimizer package ({e}); pip install torch-optimizer") from None
    return torch_optimizer


def build_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Optimizer ``cfg.optimizer`` over ``params``.

    Seed defaults: SGD-family momentum 0.9; Adamax at twice ``cfg.lr``; AdamW weight decay 0.01.
    On CUDA, Adam/AdamW/SGD use torch's fused kernels and the others its multi-tensor (foreach)
    paths; on CPU torch's defaults (bitwise reproducible) are kept.
    """
    params = list(params)
    wd = default_weight_decay(cfg.optimizer) if cfg.weight_decay is None else cfg.weight_decay
    lr, name = cfg.lr, cfg.optimizer
    cuda = device.type == "cuda"
    fast = {"fused": True} if cuda else {}
    multi = {"foreach": True} if cuda else {}
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=wd, **fast)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, **fast)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, **fast)
    if name == "adamax":
        return torch.optim.Adamax(params, lr=2 * lr, weight_decay=wd, **multi)
    if name == "radam":
        # the seed's RAdam is torch-optimizer's, whose weight decay is decoupled (p -= lr * wd * p);
        # torch's RAdam with decoupled_weight_decay makes the same update, with foreach kernels
        return torch.optim.RAdam(params, lr=lr, weight_decay=wd, decoupled_weight_decay=True, **multi)
    topt = _torch_optimizer(name)  # only the four optimizers below need the package
    if name == "sgdp":
        return topt.SGDP(params, lr=lr, momentum=cfg.momentum, weight_decay=wd)
    if name == "sgdw":
        return topt.SGDW(params, lr=lr, momentum=cfg.momentum, weight_decay=wd)
    if name == "adabound":
        return topt.AdaBound(params, lr=lr, weight_decay=wd)
    if name == "adamp":
        return topt.AdamP(params, lr=lr, weight_decay=wd)
    raise FsmtlError(f"--optimizer: unknown optimizer {name!r}")


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):
    """Epoch-level scheduler: ``plateau`` (on validation accuracy, mode max), ``step``, ``cosine``
    (over ``cfg.cosine_length()`` epochs), or ``none`` (also for ``budget``, whose lr the run sets
    every step from :func:`train.budget.budget_factor`). Step it with
    :func:`scheduler_step` once an epoch."""
    s = cfg.scheduler
    if s == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience
        )
    if s == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.step_gamma)
    if s == "cosine":  # closed form: a resume with a longer horizon stretches it (sync_scheduler_lr)
        return torch.optim.lr_scheduler.LambdaLR(opt, cosine_factor(cfg.cosine_length()))
    if s in ("none", "budget"):  # budget: the lr is set every step (train.budget), not once an epoch
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    raise FsmtlError(f"--scheduler: unknown scheduler {s!r}")


def cosine_factor(length: int) -> Callable[[int], float]:
    """Epoch -> lr factor of a cosine from 1 to 0 over ``length`` epochs, then 0 (never rising again)."""

    def factor(epoch: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, length) / length))

    return factor


def resumed_cosine_length(given: int | None, stored: int, max_epochs: int | None) -> int:
    """The length of a resumed cosine schedule.

    ``given``: --cosine-epochs (None: the cosine follows --max-epochs); ``stored``: the length in
    effect when the checkpoint was written; ``max_epochs``: the resumed run's budget. A given length
    never moves; one that follows the budget keeps its length under a smaller budget (which then
    only stops the run earlier) and stretches to a larger one.
    """
    if given is not None:
        return given
    return max(stored, max_epochs if max_epochs is not None else 100)  # unbounded: 100, as a fresh run


def set_cosine_length(scheduler, length: int) -> None:
    """Give a cosine LambdaLR (from :func:`build_scheduler`) the length ``length``; call
    :func:`sync_scheduler_lr` after it."""
    scheduler.lr_lambdas = [cosine_factor(length) for _ in scheduler.lr_lambdas]


def upgrade_scheduler_state(state: dict[str, Any], scheduler) -> dict[str, Any]:
    """A checkpoint's scheduler state, made loadable by ``scheduler``: runs saved before cosine
    became a LambdaLR hold CosineAnnealingLR state (``T_max``, no ``lr_lambdas``); its epoch count
    and base learning rates carry over, and :func:`sync_scheduler_lr` recomputes the lr."""
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR) and "T_max" in state and "lr_lambdas" not in state:
        return {"lr_lambdas": [None] * len(scheduler.lr_lambdas), "base_lrs": state["base_lrs"],
                "last_epoch": state["last_epoch"], "_last_lr": state.get("_last_lr", state["base_lrs"]),
                "verbose": state.get("verbose", False), "_step_count": state.get("_step_count", 1),
                "_get_lr_called_within_step": False}  # fmt: skip
    return state


def sync_scheduler_lr(scheduler) -> None:
    """After loading a checkpoint: set a lambda schedule's lr from its factor at the loaded epoch (the
    same value unless the schedule changed, e.g. a cosine stretched by a larger --max-epochs)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * fn(scheduler.last_epoch)
        scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]


def set_lr_factor(scheduler, factor: float) -> None:
    """Set every param group's lr to its base lr (``scheduler.base_lrs``) times ``factor``."""
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * factor


def scheduler_step(scheduler, val_acc: float | None) -> None:
    """Advance one epoch; the plateau scheduler reads the validation accuracy (skipped without one)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        if val_acc is not None:
            scheduler.step(val_acc)
    else:
        scheduler.step()
