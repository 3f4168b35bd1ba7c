"""Trainer pieces in isolation: the MTL loss, heads, ProtoNet, optimizers, schedulers, config, CLI."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fsmtl.core.errors import FsmtlError
from fsmtl.train.__main__ import train_config_from_args
from fsmtl.train.algorithms import protonet_loss
from fsmtl.train.shape import StepShape
from fsmtl.train.config import OPTIMIZERS, TrainConfig
from fsmtl.train.mtl import init_heads, mtl_loss, task_classes
from fsmtl.train.optim import build_optimizer, build_scheduler, scheduler_step
from fsmtl.train.presets import PRESETS, preset_overrides


def _batch(t: int, ways: int, per: int, n_classes: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    classes = torch.stack([torch.randperm(n_classes, generator=g)[:ways] for _ in range(t)])  # [T, ways]
    global_class = classes.unsqueeze(2).expand(t, ways, per).reshape(-1)
    label = torch.arange(ways).repeat_interleave(per).repeat(t)
    feats = torch.randn(t * ways * per, d, generator=g)
    return feats, global_class, label, classes


@pytest.mark.parametrize("norm", [False, True])
def test_mtl_loss_equals_a_python_loop_over_tasks(norm: bool) -> None:
    t, ways, per, c, d = 4, 5, 3, 12, 16
    feats, gc, label, classes = _batch(t, ways, per, c, d)
    heads = torch.randn(c, d)
    loss, acc = mtl_loss(feats, heads, gc, label, t, ways, norm)
    f = F.normalize(feats, dim=-1) if norm else feats
    losses = []
    for i in range(t):
        rows = slice(i * ways * per, (i + 1) * ways * per)
        losses.append(F.cross_entropy(f[rows] @ heads[classes[i]].T, label[rows]))
    assert loss.item() == pytest.approx(torch.stack(losses).mean().item(), rel=1e-5)
    assert 0.0 <= acc.item() <= 1.0


def test_mtl_loss_gradients_reach_only_the_rows_of_sampled_classes() -> None:
    feats, gc, label, classes = _batch(2, 5, 2, 20, 8)
    heads = torch.randn(20, 8, requires_grad=True)
    mtl_loss(feats, heads, gc, label, 2, 5, False)[0].backward()
    touched = heads.grad.abs().sum(1) > 0
    assert set(touched.nonzero().flatten().tolist()) == set(classes.flatten().tolist())


def test_task_classes_reads_the_class_of_each_way() -> None:
    _, gc, _, classes = _batch(3, 5, 4, 10, 2)
    assert torch.equal(task_classes(gc, 3, 5), classes)


def test_init_heads_is_kaiming_uniform_scaled_by_sqrt_classes_over_ways() -> None:
    w = init_heads(64, 640, 5, torch.Generator().manual_seed(0))
    bound = math.sqrt(64 / 5) / math.sqrt(640)
    assert w.shape == (64, 640)
    assert w.abs().max().item() <= bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert torch.equal(w, init_heads(64, 640, 5, torch.Generator().manual_seed(0)))


def test_protonet_loss_is_zero_ish_when_queries_sit_on_their_prototypes() -> None:
    ways, shots, queries, d = 3, 2, 2, 4
    centres = torch.eye(d)[:ways] * 10
    feats = centres.unsqueeze(1).expand(ways, shots + queries, d).reshape(-1, d)
    s = StepShape(1, ways, shots, queries, norm=False)
    loss, acc = protonet_loss(feats, torch.empty(0, d), torch.zeros(0), torch.zeros(0), s)
    assert loss.item() < 1e-6 and acc.item() == 1.0


def test_every_optimizer_builds_with_the_seeds_defaults() -> None:
    for name in OPTIMIZERS:
        p = torch.nn.Parameter(torch.zeros(3))
        opt = build_optimizer([p], TrainConfig(optimizer=name), torch.device("cpu"))
        group = opt.param_groups[0]
        assert group["lr"] == pytest.approx(2e-3 if name == "adamax" else 1e-3), name
        assert group["weight_decay"] == pytest.approx(0.01 if name == "adamw" else 0.0), name
        if name in ("sgd", "sgdp", "sgdw"):
            assert group["momentum"] == 0.9
        p.grad = torch.ones(3)
        opt.step()
        assert torch.isfinite(p).all()


def test_plateau_scheduler_cuts_lr_tenfold_after_patience_epochs_without_improvement() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    cfg = TrainConfig()
    opt = build_optimizer([p], cfg, torch.device("cpu"))
    sched = build_scheduler(opt, cfg)
    for acc in [0.5] + [0.4] * 5:
        scheduler_step(sched, acc)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_step_and_cosine_schedulers_follow_their_formulas() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    cfg = TrainConfig(scheduler="step", step_size=2, step_gamma=0.5)
    opt = build_optimizer([p], cfg, torch.device("cpu"))
    sched = build_scheduler(opt, cfg)
    opt.step()  # torch warns when a scheduler steps before its optimizer ever did
    for _ in range(4):
        scheduler_step(sched, None)
    assert opt.param_groups[0]["lr"] == pytest.approx(2.5e-4)
    cfg = TrainConfig(scheduler="cosine", max_epochs=4)
    opt = build_optimizer([p], cfg, torch.device("cpu"))
    sched = build_scheduler(opt, cfg)
    opt.step()
    for _ in range(2):
        scheduler_step(sched, None)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)


def test_a_cosine_resumed_with_more_epochs_is_stretched_not_restarted() -> None:
    from fsmtl.train.optim import sync_scheduler_lr

    def sched(max_epochs: int):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = build_optimizer([p], TrainConfig(optimizer="sgd", lr=1.0, device="cpu"), torch.device("cpu"))
        return opt, build_scheduler(opt, TrainConfig(scheduler="cosine", max_epochs=max_epochs))

    opt, s2 = sched(2)
    for _ in range(2):
        scheduler_step(s2, None)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    scheduler_step(s2, None)  # past its length the cosine stays at 0 (CosineAnnealingLR would climb back)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    opt_a, s_a = sched(2)
    for _ in range(2):
        scheduler_step(s_a, None)
    opt_b, s4 = sched(4)  # resumed with --max-epochs 4
    opt_b.load_state_dict(opt_a.state_dict())
    s4.load_state_dict(s_a.state_dict())
    sync_scheduler_lr(s4)
    lrs = [opt_b.param_groups[0]["lr"]]
    for _ in range(2):
        scheduler_step(s4, None)
        lrs.append(opt_b.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.5, 0.5 * (1 + math.cos(math.pi * 3 / 4)), 0.0], abs=1e-12)


def test_config_defaults_are_the_seeds() -> None:
    c = TrainConfig()
    assert (c.train_ways, c.train_shots, c.train_queries, c.meta_batch_size) == (5, 5, 5, 6)
    assert (c.model, c.drop_rate, c.optimizer, c.lr, c.scheduler) == ("resnet12", 0.1, "radam", 1e-3, "plateau")
    assert (c.early_stop_patience, c.epoch_length, c.val_epoch_length, c.test_queries) == (15, 1600, 400, 30)


def test_an_epoch_is_1600_tasks_as_the_seed_counts_them_at_any_meta_batch_size_and_rank_count() -> None:
    # the seed: 1600 one-task batches, an optimizer step every meta_batch_size and one on the last partial group
    assert TrainConfig().steps_per_epoch() == 267
    assert TrainConfig(meta_batch_size=2).steps_per_epoch() == 800  # mini-ImageNet 5-shot
    assert TrainConfig(meta_batch_size=1).steps_per_epoch() == 1600  # tiered-ImageNet 5-shot, FC100 1-shot
    assert TrainConfig(meta_batch_size=2).steps_per_epoch(world_size=8) == 100  # 16 tasks a step


@pytest.mark.parametrize("field,value", [("model", "resnet99"), ("optimizer", "lamb"), ("scheduler", "poly"),
                                         ("precision", "fp8"), ("pipeline", "tfdata"), ("algorithm", "reptile-xl"),
                                         ("weight_decay", -1.0), ("momentum", 1.5), ("grad_clip", -1.0),
                                         ("plateau_factor", 1.0), ("step_gamma", 0.0), ("workers", -2)])
def test_config_check_names_the_bad_setting(field: str, value: str) -> None:
    with pytest.raises(FsmtlError, match=field.replace("_", "-")):
        TrainConfig(**{field: value}).check()


@pytest.mark.parametrize("field,value", [("width", 32), ("pools", 3)])
def test_conv4_only_options_are_refused_for_other_backbones(field: str, value: int) -> None:
    TrainConfig(model="conv4", **{field: value}).check()
    with pytest.raises(FsmtlError, match=f"--{field}: only for --model conv4, not resnet12"):
        TrainConfig(model="resnet12", **{field: value}).check()


def test_every_preset_is_a_valid_config() -> None:
    for name in PRESETS:
        TrainConfig(**preset_overrides(name)).check()


def test_unknown_preset_is_a_user_error() -> None:
    with pytest.raises(FsmtlError, match="--preset"):
        train_config_from_args(["--data", "x", "--preset", "imagenet-21k"])


def test_flags_accept_dashes_and_the_seeds_underscore_spellings() -> None:
    a = train_config_from_args(["--data", "d", "--meta-batch-size", "2", "--norm-train-features", "--train-queries", "15"])
    b = train_config_from_args(["--data", "d", "--meta_batch_size", "2", "--norm_train_features", "--train_queries", "15"])
    assert a == b
    assert (a.meta_batch_size, a.norm_train_features, a.train_queries) == (2, True, 15)


def test_preset_then_flags_override_it() -> None:
    cfg = train_config_from_args(["--data", "d", "--preset", "tiered-imagenet-1shot", "--meta-batch-size", "3"])
    assert (cfg.train_queries, cfg.norm_train_features, cfg.test_shots) == (35, True, 1)
    assert cfg.meta_batch_size == 3 and cfg.preset == "tiered-imagenet-1shot"


def test_fc100_5shot_preset_trains_without_feature_normalisation() -> None:
    cfg = train_config_from_args(["--data", "d", "--preset", "fc100-5shot"])
    assert cfg.norm_train_features is False and cfg.test_shots == 5


def test_optional_flags_accept_none() -> None:
    cfg = train_config_from_args(["--data", "d", "--max-epochs", "3", "--weight-decay", "none"])
    assert cfg.max_epochs == 3 and cfg.weight_decay is None


def test_every_flag_has_help_in_a_group_and_lists_its_choices() -> None:
    from dataclasses import fields

    from fsmtl.train.__main__ import _GROUPS, build_parser
    from fsmtl.train.config import FIELD_HELP, SCHEDULERS

    assert {f.name for f in fields(TrainConfig)} == set(FIELD_HELP)
    assert {group for group, _ in FIELD_HELP.values()} <= set(_GROUPS)
    text = " ".join(build_parser().format_help().split())  # unwrap argparse's line breaks
    assert "{choices}" not in text
    for option in (*OPTIMIZERS, *SCHEDULERS, "resnet12", "wrn28_10", "protonet", "mini-imagenet-5shot"):
        assert option in text
    assert "--meta-batch-size INT, --meta_batch_size INT training tasks per optimizer step" in text


def test_the_training_docs_list_every_flag() -> None:
    from dataclasses import fields
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    missing = [f.name for f in fields(TrainConfig) if f"`--{f.name.replace('_', '-')}`" not in text]
    assert missing == []


def test_torch_optimizer_is_needed_only_by_its_own_optimizers(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch_optimizer", None)  # as on the lent GPU machine
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert isinstance(build_optimizer(params, TrainConfig(optimizer="radam"), torch.device("cpu")), torch.optim.RAdam)
    with pytest.raises(FsmtlError, match="torch-optimizer"):
        build_optimizer(params, TrainConfig(optimizer="sgdp"), torch.device("cpu"))


def test_radam_makes_the_seeds_torch_optimizer_updates_also_with_weight_decay() -> None:
    topt = pytest.importorskip("torch_optimizer")
    g = torch.Generator().manual_seed(0)
    start = torch.randn(20, generator=g)
    grads = [torch.randn(20, generator=g) for _ in range(12)]  # past RAdam's 5-step warm-up too
    ours_p, ref_p = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    ours = build_optimizer([ours_p], TrainConfig(optimizer="radam", weight_decay=0.1), torch.device("cpu"))
    ref = topt.RAdam([ref_p], lr=1e-3, weight_decay=0.1)
    for grad in grads:
        for p, opt in ((ours_p, ours), (ref_p, ref)):
            p.grad = grad.clone()
            opt.step()
    assert torch.allclose(ours_p, ref_p, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(ours_p, start)


def test_a_checkpoint_of_the_old_cosine_scheduler_still_resumes() -> None:
    from fsmtl.train.optim import sync_scheduler_lr, upgrade_scheduler_state

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    old = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    for _ in range(2):
        opt.step()
        old.step()
    q = torch.nn.Parameter(torch.zeros(1))
    opt2 = torch.optim.SGD([q], lr=1.0)
    new = build_scheduler(opt2, TrainConfig(scheduler="cosine", max_epochs=4))
    new.load_state_dict(upgrade_scheduler_state(old.state_dict(), new))
    sync_scheduler_lr(new)
    assert new.last_epoch == 2 and opt2.param_groups[0]["lr"] == pytest.approx(0.5)


def test_task_logits_are_float32_under_bf16_autocast() -> None:
    from fsmtl.train.mtl import task_logits

    feats, _, _, classes = _batch(2, 5, 4, 16, 8)
    heads = torch.randn(16, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = task_logits(feats.reshape(2, 20, 8).bfloat16(), heads, classes)
    assert out.dtype == torch.float32 and out.shape == (2, 20, 5)


def test_the_last_line_of_a_run_names_its_result_and_an_eval_command_that_works_for_it(tmp_path) -> None:
    import json

    from fsmtl.train.__main__ import done_line

    run, data = tmp_path / "runs" / "a", tmp_path / "data"
    (run / "checkpoints").mkdir(parents=True)
    data.mkdir()
    (data / "meta.json").write_text(json.dumps({"splits": {"train": {}, "val": {}, "test": {}}}))
    cfg = TrainConfig(data=str(data), out=str(run))
    summary = {"reason": "x", "epoch": 3, "step": 60, "best_val_acc": 0.4567, "out": str(run), "signal": None}
    (run / "checkpoints" / "best.pt").write_bytes(b"")
    line = done_line(summary, cfg)
    assert "best val acc 45.67%" in line and "epoch 3, step 60" in line
    assert line.endswith(f"evaluate with: fsmtl eval --run {run}")
    (run / "checkpoints" / "best.pt").unlink()  # stopped inside its first epoch: only last.pt
    early = done_line({**summary, "epoch": 0, "best_val_acc": None}, cfg)
    assert "not validated yet" in early and early.endswith(f"fsmtl eval --run {run} --checkpoint last")
    (data / "meta.json").write_text(json.dumps({"splits": {"train": {}, "val": {}}}))  # no test classes
    assert done_line(summary, cfg).endswith("--checkpoint last --split val")
    assert "no validation" in done_line({**summary, "best_val_acc": None}, TrainConfig(data=str(data), val_split="none"))
    # data without a val split: validation never ran, whatever --val-split says
    assert "no validation" in done_line({**summary, "best_val_acc": None, "validates": False}, cfg)


def test_a_resumed_cosine_keeps_its_length_unless_it_follows_a_larger_max_epochs() -> None:
    from fsmtl.train.optim import resumed_cosine_length

    assert resumed_cosine_length(None, 20, 2) == 20  # a smaller budget: the length stays
    assert resumed_cosine_length(None, 20, 40) == 40  # a larger one stretches a cosine that follows it
    assert resumed_cosine_length(None, 20, None) == 100  # --max-epochs none: unbounded, 100 as a fresh run
    assert resumed_cosine_length(None, 100, 150) == 150  # unbounded (100), stretched
    assert resumed_cosine_length(50, 50, 100) == 50 and resumed_cosine_length(50, 50, 200) == 50  # given: never moves


def test_a_checkpoint_path_that_cannot_be_read_is_named_as_such(tmp_path) -> None:
    from fsmtl.core.fileio import load_weights_only

    with pytest.raises(FsmtlError, match=r"cannot be read \(IsADirectoryError"):
        load_weights_only(tmp_path)


def test_the_run_log_names_precision_as_the_flag_spells_it() -> None:
    from fsmtl.core.device import precision_name

    assert [precision_name(d) for d in (torch.bfloat16, torch.float16, None)] == ["bf16", "fp16", "fp32"]


def test_reset_peak_memory_initialises_cuda_before_resetting_its_counter(monkeypatch) -> None:
    # on an H200, reset_peak_memory_stats as a process's first CUDA call failed with "Invalid
    # device argument" (the allocator keeps no per-device stats before CUDA is initialised)
    import torch

    from fsmtl.train.runlog import reset_peak_memory

    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "init", lambda: calls.append("init"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: calls.append(f"reset {d}"))
    reset_peak_memory(torch.device("cpu"))
    assert calls == []
    reset_peak_memory(torch.device("cuda", 0))
    assert calls == ["init", "empty_cache", "reset cuda:0"]
