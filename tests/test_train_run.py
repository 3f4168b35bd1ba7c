"""End-to-end training on tiny synthetic shards: files, checkpoints, exact resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import optional_import, rewrite_meta
from fsmtl.core.cli import run_stage_main
from fsmtl.core.errors import FsmtlError
from fsmtl.pipelines.loader import build_task_loader
from fsmtl.train.__main__ import main
from fsmtl.train.checkpoint import save_checkpoint
from fsmtl.train.config import TrainConfig
from fsmtl.train.runlog import read_metrics
from fsmtl.train.run import build_run, train

CONTRACT_KEYS = {"format", "version", "model_name", "model_kwargs", "model", "heads", "optimizer", "scheduler",
                 "scaler", "rng", "epoch", "step", "best_val_acc", "config", "data_meta"}


def tiny_cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model="conv4", meta_batch_size=2, epoch_length=8,
                val_epoch_length=4, test_queries=5, max_epochs=2, wandb="disabled", progress=False,
                log_every=2, precision="fp32")
    return TrainConfig(**{**base, **kw})


def test_training_writes_config_metrics_and_weights_only_checkpoints(tiny_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = train(tiny_cfg(tiny_shards, out))
    assert summary["epoch"] == 2 and summary["step"] == 8
    assert json.loads((out / "config.json").read_text())["model"] == "conv4"
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("train_loss", "train_acc", "val_acc", "val_ci95", "lr", "images_per_s", "data_wait_frac", "peak_mem_mb"):
        assert rows[-1][key] is not None, key
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(out / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert CONTRACT_KEYS <= set(ckpt)
        assert ckpt["format"] == "fsmtl-checkpoint" and ckpt["version"] == 1
        assert ckpt["heads"].shape == (8, 256)  # 8 train classes x conv4's 256-d at 32 px
        assert ckpt["data_meta"]["n_train_classes"] == 8 and ckpt["config"]["data"] == str(tiny_shards)
    assert not list((out / "checkpoints").glob("*.tmp"))


def test_resume_after_epoch_1_reproduces_epoch_2_bitwise(tiny_shards: Path, tmp_path: Path) -> None:
    full = tmp_path / "full"
    train(tiny_cfg(tiny_shards, full, precision="auto"))
    part = tmp_path / "part"
    train(tiny_cfg(tiny_shards, part, precision="auto", max_epochs=1))
    assert run_stage_main(main, ["--resume", str(part), "--max-epochs", "2", "--no-progress"]) == 0
    a, b = read_metrics(full), read_metrics(part)
    assert [r["epoch"] for r in b] == [1, 2]
    for key in ("train_loss", "train_acc", "val_acc", "lr", "step"):
        assert a[1][key] == b[1][key], key
    sa = torch.load(full / "checkpoints" / "last.pt", weights_only=True)["model"]
    sb = torch.load(part / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_an_out_holding_a_run_is_refused_unless_overwrite(tiny_shards: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    train(tiny_cfg(tiny_shards, out, max_epochs=1))
    (out / "checkpoints" / "best.pt").write_bytes(b"stale best of an older run")
    (out / "reports").mkdir()
    (out / "reports" / "eval_test_best.json").write_text("{}")
    before = (out / "checkpoints" / "last.pt").read_bytes()
    argv = ["--data", str(tiny_shards), "--out", str(out), "--model", "conv4", "--epoch-length", "12",
            "--max-epochs", "1", "--val-epoch-length", "4", "--test-queries", "5", "--wandb", "disabled",
            "--no-progress", "--precision", "fp32"]  # fmt: skip
    assert run_stage_main(main, argv) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert (out / "checkpoints" / "last.pt").read_bytes() == before  # nothing touched
    assert run_stage_main(main, [*argv, "--overwrite"]) == 0
    assert (out / "checkpoints" / "best.pt").read_bytes() != b"stale best of an older run"
    assert not (out / "reports" / "eval_test_best.json").exists()
    assert [r["step"] for r in read_metrics(out)] == [2]


def test_resume_with_another_model_is_refused_before_training(tiny_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_cfg(tiny_shards, run, max_epochs=1))
    with pytest.raises(FsmtlError, match="resnet12"):
        train(tiny_cfg(tiny_shards, run, model="resnet12", resume=str(run)))


def test_resume_on_other_data_is_refused_before_training(tiny_shards: Path, tiny_shards_84: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_cfg(tiny_shards, run, max_epochs=1))
    with pytest.raises(FsmtlError, match="image_shape|n_train_classes"):
        train(tiny_cfg(tiny_shards_84, run, resume=str(run), test_shots=1, test_queries=5))


def test_resume_on_other_images_of_the_same_shape_is_refused(tiny_shards: Path, tmp_path: Path) -> None:
    # same benchmark, shape, classes and normalisation, other pixels: refused by the train files' sha256
    from fsmtl.preprocess.synthetic import SyntheticConfig

    from conftest import write_synthetic

    other = write_synthetic(tmp_path / "other", SyntheticConfig(image_size=32, classes=(8, 5, 5), per_class=30, seed=7))
    meta = json.loads((other / "meta.json").read_text())
    ours = json.loads((tiny_shards / "meta.json").read_text())
    rewrite_meta(other, {**meta, "mean": ours["mean"], "std": ours["std"]})
    run = tmp_path / "run"
    train(tiny_cfg(tiny_shards, run, max_epochs=1))
    with pytest.raises(FsmtlError, match="checkpoint was trained on other images"):
        train(tiny_cfg(other, run, resume=str(run), max_epochs=2))
    assert train(tiny_cfg(tiny_shards, run, resume=str(run), max_epochs=2))["epoch"] == 2  # its own data: resumes


def test_cli_reports_bad_settings_as_one_line_errors(tiny_shards: Path, tmp_path: Path, capsys) -> None:
    base = ["--data", str(tiny_shards), "--out", str(tmp_path / "r"), "--wandb", "disabled"]
    for bad, word in ((["--model", "vit"], "--model"), (["--optimizer", "lion"], "--optimizer"),
                      (["--scheduler", "poly"], "--scheduler"), (["--preset", "nope"], "--preset"),
                      (["--test-queries", "100"], "--test-queries"), (["--train-ways", "1"], "at least 2 classes"),
                      (["--test-ways", "1"], "--test-ways")):
        assert run_stage_main(main, base + bad) == 2
        assert word in capsys.readouterr().err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_missing_data_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(FsmtlError, match="--data .*nope: not found"):
        train(tiny_cfg(tmp_path / "nope", tmp_path / "r"))


def wrapped_loader(hook):
    """A ``loader_factory`` whose batches pass through ``hook(n, fetch)``: n counts batches from 1,
    ``fetch()`` returns the real loader's next batch."""

    def factory(split, mean, std, pcfg):
        loader = build_task_loader(split, mean, std, pcfg)

        class Wrapped:
            n = 0

            def __next__(self):
                Wrapped.n += 1
                return hook(Wrapped.n, lambda: next(loader))

            def state_dict(self):
                return loader.state_dict()

            def close(self):
                loader.close()

        return Wrapped()

    return factory


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tiny_shards: Path, tmp_path: Path) -> None:
    def poison(n, fetch):  # batch 6 = step 5: the second step of epoch 2
        batch = fetch()
        return batch._replace(images=batch.images * float("nan")) if n == 6 else batch

    poisoned = wrapped_loader(poison)

    run = tmp_path / "run"
    with pytest.raises(FsmtlError, match="step 5"):
        train(tiny_cfg(tiny_shards, run), loader_factory=poisoned)
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_sigterm_checkpoints_mid_epoch_and_resume_equals_an_uninterrupted_run(tiny_shards: Path, tmp_path: Path) -> None:
    import os
    import signal

    def notice(n, fetch):
        if n == 3:  # a scheduler's notice during step 3 of epoch 1
            os.kill(os.getpid(), signal.SIGTERM)
        return fetch()

    preempted = wrapped_loader(notice)

    before = signal.getsignal(signal.SIGTERM)
    run = tmp_path / "run"
    summary = train(tiny_cfg(tiny_shards, run, epoch_length=16, scheduler="cosine"), loader_factory=preempted)
    # one process hears the signal after the step it came in (step 3), not at the next log sync (4)
    assert summary["reason"] == "SIGTERM received" and (summary["epoch"], summary["step"]) == (0, 3)
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"], ckpt["epoch_step"]) == (0, 3, 3) and read_metrics(run) == []
    assert run_stage_main(main, ["--resume", str(run), "--no-progress"]) == 0
    # the same run as one never stopped: same steps, schedule, validation and weights
    full = tmp_path / "full"
    train(tiny_cfg(tiny_shards, full, epoch_length=16, scheduler="cosine"))
    a, b = read_metrics(full), read_metrics(run)
    assert [r["step"] for r in b] == [8, 16]
    for ra, rb in zip(a, b):
        for key in ("epoch", "step", "val_acc", "lr", "best_val_acc"):
            assert ra[key] == rb[key], key
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-5)  # epoch 1 is averaged in two parts
    sa = torch.load(full / "checkpoints" / "last.pt", weights_only=True)["model"]
    sb = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_second_ctrl_c_aborts_at_once() -> None:
    import os
    import signal

    from fsmtl.train.signals import StopRequest

    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_trainval_trains_on_train_and_val_classes_and_validates_on_test_as_the_seed(
    tiny_shards: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    train(tiny_cfg(tiny_shards, run, trainval=True, max_epochs=1))
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["heads"].shape[0] == 13 and ckpt["data_meta"]["n_train_classes"] == 13
    assert "validating on the test split (--trainval, as the seed did)" in capsys.readouterr().err


@pytest.mark.parametrize("trainval,val_split,expected", [(False, "auto", "val"), (True, "auto", "test"),
                                                         (True, "val", "val"), (False, "test", "test"),
                                                         (True, "none", None)])
def test_val_split_picks_the_split_validation_runs_on(tiny_shards: Path, tmp_path: Path, trainval: bool,
                                                      val_split: str, expected: str | None) -> None:
    from fsmtl.preprocess.shard_reader import open_shards

    run = build_run(tiny_cfg(tiny_shards, tmp_path / "r", trainval=trainval, val_split=val_split))
    try:
        if expected is None:
            assert run.data.val is None and run.validate is None
        else:
            assert run.data.val.classes == open_shards(tiny_shards).split(expected).classes
            assert run.validate is not None
    finally:
        run.loader.close()


def test_a_val_split_the_data_lacks_is_refused_before_training(tiny_shards: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "no_test"
    shutil.copytree(tiny_shards, data)
    meta = json.loads((data / "meta.json").read_text())
    meta["splits"] = {k: v for k, v in meta["splits"].items() if k != "test"}
    rewrite_meta(data, meta)
    with pytest.raises(FsmtlError, match="no 'test' split.*as the seed did.*--val-split none"):
        build_run(tiny_cfg(data, tmp_path / "r", trainval=True))


def test_max_steps_stops_mid_epoch_and_a_resume_finishes_that_epoch(tiny_shards: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "r"
    summary = train(tiny_cfg(tiny_shards, run, max_epochs=None, max_steps=6))
    assert (summary["step"], summary["epoch"]) == (6, 1)  # epoch 2 is unfinished: its final weights are validated
    assert [(r["step"], r.get("final", False)) for r in read_metrics(run)] == [(4, False), (6, True)]
    assert "--max-steps N (N > 6" in capsys.readouterr().err
    assert run_stage_main(main, ["--resume", str(run), "--no-progress"]) == 0  # the budget is still 6
    assert "--max-steps 6 already reached at step 6" in capsys.readouterr().err
    assert run_stage_main(main, ["--resume", str(run), "--max-steps", "none", "--max-epochs", "2", "--no-progress"]) == 0
    rows = read_metrics(run)
    assert [(r["epoch"], r["step"], r.get("final", False)) for r in rows] == [(1, 4, False), (1, 6, True), (2, 8, False)]
    assert rows[2]["wall_s"] > rows[0]["wall_s"]  # wall time adds up over the resumes


def test_without_validation_a_budget_stop_keeps_its_final_weights_as_best(tiny_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    summary = train(tiny_cfg(tiny_shards, run, max_epochs=None, max_steps=6, val_split="none"))
    assert (summary["step"], summary["epoch"]) == (6, 1)  # stopped 2 steps into epoch 2
    best, last = (torch.load(run / "checkpoints" / f"{n}.pt", weights_only=True) for n in ("best", "last"))
    # the annealed end of the budget, not the end of epoch 1 (step 4)
    assert (best["step"], best["epoch_step"], best["epoch"]) == (6, 2, 1) == (last["step"], last["epoch_step"], last["epoch"])
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])


def test_protonet_trains_through_the_same_loop(tiny_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    summary = train(tiny_cfg(tiny_shards, run, algorithm="protonet", max_epochs=1))
    assert summary["epoch"] == 1
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["heads"].shape[0] == 0


def test_resnet12_dropblock_ramp_counts_tasks_as_the_seed_did(tiny_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    train(tiny_cfg(tiny_shards, run, model="resnet12", max_epochs=2, epoch_length=5, val_epoch_length=2,
                   meta_batch_size=2, train_shots=1, train_queries=1, test_queries=2, precision="auto"))
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 6  # epochs of 5 tasks at 2 a step: 3 steps each (the seed steps on a partial one)
    # the seed's counter: one per task forward, training and validation; the last step (index 5) is
    # in epoch 2, after 5 steps of 2 tasks and one validation of 2 tasks
    assert int(ckpt["model"]["step"]) == 5 * 2 + 2 and ckpt["model_kwargs"] == {"drop_rate": 0.1}


def test_wandb_offline_run_is_written_inside_the_run_dir(tiny_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    train(tiny_cfg(tiny_shards, run, max_epochs=1, epoch_length=4, wandb="offline"))
    assert list((run / "wandb").glob("offline-run-*"))
    assert run_stage_main(main, ["--resume", str(run), "--max-epochs", "2", "--no-progress"]) == 0
    def run_ids() -> set[str]:  # offline-run-<date>_<time>-<id>[-<n> when the second repeats]
        return {p.name.split("-")[3] for p in (run / "wandb").glob("offline-run-*")}

    ids = run_ids()
    assert len(ids) == 1  # a resume continues the same wandb run (one id), not a new one
    train(tiny_cfg(tiny_shards, run, max_epochs=1, epoch_length=4, wandb="offline", overwrite=True))
    fresh = run_ids()
    assert len(fresh) == 1 and fresh != ids  # --overwrite starts a new wandb run and drops the old one


@pytest.mark.parametrize("backend,module", [("reference", None), ("dali", "nvidia.dali"), ("ffcv", "ffcv")])
def test_every_pipeline_back_end_trains(backend: str, module: str | None, tiny_shards: Path, tmp_path: Path) -> None:
    if module is not None:
        optional_import(module)
    summary = train(tiny_cfg(tiny_shards, tmp_path / "r", pipeline=backend, max_epochs=1, epoch_length=4))
    assert summary["step"] == 2
    assert read_metrics(tmp_path / "r")[0]["train_loss"] > 0


def test_a_relative_data_path_is_stored_absolute(tiny_shards: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tiny_shards.parent)
    train(tiny_cfg(Path(tiny_shards.name), tmp_path / "run", max_epochs=1, epoch_length=4))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"] == str(tiny_shards.resolve())


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_view_based_optimizers_train_without_channels_last(name: str, tiny_shards: Path, tmp_path: Path) -> None:
    optional_import("torch_optimizer")
    summary = train(tiny_cfg(tiny_shards, tmp_path / "run", optimizer=name, max_epochs=1, epoch_length=4))
    assert summary["step"] == 2
    assert json.loads((tmp_path / "run" / "config.json").read_text())["channels_last"] is False


def test_a_run_stopped_by_a_signal_exits_like_one(tiny_shards: Path, tmp_path: Path, monkeypatch) -> None:
    import fsmtl.train.run as run_module
    for sig, code in (("SIGTERM", 143), ("SIGINT", 130), (None, 0)):
        summary = {"reason": "x", "epoch": 1, "step": 2, "best_val_acc": None, "out": str(tmp_path / "r"), "signal": sig}
        monkeypatch.setattr(run_module, "train", lambda cfg, s=summary: s)
        assert main(["--data", str(tiny_shards), "--out", str(tmp_path / "r")]) == code


def test_resume_refuses_to_change_the_optimizer_or_its_schedule(tiny_shards: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    train(tiny_cfg(tiny_shards, run, max_epochs=1, epoch_length=4))
    assert run_stage_main(main, ["--resume", str(run), "--lr", "0.01", "--max-epochs", "2"]) == 2
    assert "--lr 0.001 -> 0.01" in capsys.readouterr().err
    assert run_stage_main(main, ["--resume", str(run), "--lr", "0.001", "--max-epochs", "2", "--no-progress"]) == 0


def test_resume_keeps_its_run_directory_and_refuses_another_out(tiny_shards: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    train(tiny_cfg(tiny_shards, run, max_epochs=1))
    assert run_stage_main(main, ["--resume", str(run), "--out", str(tmp_path / "other"), "--max-epochs", "2"]) == 2
    assert "continues in its own directory" in capsys.readouterr().err and not (tmp_path / "other").exists()
    assert run_stage_main(main, ["--resume", str(run), "--out", str(run), "--max-epochs", "2", "--no-progress"]) == 0


def test_a_smaller_max_epochs_on_resume_is_a_budget_not_a_shorter_cosine(tiny_shards: Path, tmp_path: Path) -> None:
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(tiny_cfg(tiny_shards, full, scheduler="cosine", max_epochs=4))
    train(tiny_cfg(tiny_shards, cut, scheduler="cosine", max_epochs=4, max_steps=4))  # stops after epoch 1
    assert run_stage_main(main, ["--resume", str(cut), "--max-epochs", "2", "--max-steps", "none", "--no-progress"]) == 0
    a, b = read_metrics(full), read_metrics(cut)
    assert [r["epoch"] for r in b] == [1, 2] and [r["lr"] for r in b] == [r["lr"] for r in a[:2]]
    assert b[1]["lr"] > 0  # a cosine compressed to 2 epochs would be at 0 here
    assert torch.load(cut / "checkpoints" / "last.pt", weights_only=True)["cosine_length"] == 4
    # and a later, larger budget still stretches it (the length was kept, not pinned as given)
    assert run_stage_main(main, ["--resume", str(cut), "--max-epochs", "6", "--no-progress"]) == 0
    rows = read_metrics(cut)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6] and all(r["lr"] > 0 for r in rows[:5])
    assert torch.load(cut / "checkpoints" / "last.pt", weights_only=True)["cosine_length"] == 6


def test_a_run_from_when_epoch_length_counted_steps_resumes_with_the_same_epochs(tiny_shards: Path, tmp_path: Path,
                                                                                  capsys) -> None:
    run = tmp_path / "old"
    train(tiny_cfg(tiny_shards, run, max_epochs=1))  # epochs of 8 tasks = 4 steps of 2
    path = run / "checkpoints" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    del ckpt["epoch_unit"], ckpt["config"]["val_split"]  # as written before epoch_length counted tasks
    del ckpt["checksum"]  # (and before checkpoints held checksums)
    ckpt["config"]["epoch_length"] = 4  # then 4 meant 4 steps
    torch.save(ckpt, path)
    assert run_stage_main(main, ["--resume", str(run), "--max-epochs", "2", "--no-progress"]) == 0
    assert "its 4-step epochs are --epoch-length 8 tasks now" in capsys.readouterr().err
    assert [r["step"] for r in read_metrics(run)] == [4, 8]
    assert json.loads((run / "config.json").read_text())["val_split"] == "val"  # as it validated then


def test_resume_from_a_file_that_is_no_checkpoint_says_so_in_one_plain_line(tmp_path: Path, capsys) -> None:
    import pathlib

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"format": pathlib.PurePosixPath("x")}, run / "checkpoints" / "last.pt")  # a global beyond tensors
    assert run_stage_main(main, ["--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "last.pt: not an fsmtl checkpoint: it holds objects beyond tensors" in err
    assert err.count("\n") == 1 and "\x1b[" not in err and "weights_only=False" not in err


def test_resume_may_switch_among_the_back_ends_that_share_one_task_stream(tiny_shards: Path, tmp_path: Path) -> None:
    optional_import("ffcv")
    full, mixed = tmp_path / "full", tmp_path / "mixed"
    train(tiny_cfg(tiny_shards, full, max_epochs=2))
    train(tiny_cfg(tiny_shards, mixed, max_epochs=1))
    assert run_stage_main(main, ["--resume", str(mixed), "--max-epochs", "2", "--pipeline", "ffcv", "--no-progress"]) == 0
    a, b = read_metrics(full), read_metrics(mixed)
    assert [r["val_acc"] for r in a] == [r["val_acc"] for r in b]  # the same tasks and images: ffcv loads, fsmtl augments
    sa = torch.load(full / "checkpoints" / "last.pt", weights_only=True)["model"]
    sb = torch.load(mixed / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert run_stage_main(main, ["--resume", str(mixed), "--max-epochs", "3", "--pipeline", "reference", "--no-progress"]) == 2


def test_resume_refuses_a_changed_validation_protocol_or_epoch_length(tiny_shards: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    train(tiny_cfg(tiny_shards, run, max_epochs=1))
    for flags in (["--test-shots", "1"], ["--test-queries", "3"], ["--val-epoch-length", "8"], ["--epoch-length", "16"]):
        assert run_stage_main(main, ["--resume", str(run), "--max-epochs", "2", *flags]) == 2
        assert flags[0] in capsys.readouterr().err


def test_metrics_log_the_rate_each_epoch_trained_with(tiny_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_cfg(tiny_shards, run, max_epochs=3, scheduler="step", step_size=1, step_gamma=0.5))
    assert [r["lr"] for r in read_metrics(run)] == pytest.approx([1e-3, 5e-4, 2.5e-4])


def test_an_out_that_is_a_file_is_refused_before_anything_is_built(tiny_shards: Path, tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(FsmtlError, match="--out .*afile: is a file"):
        train(tiny_cfg(tiny_shards, f))


def test_resuming_a_run_that_early_stopping_ended_trains_no_further(tiny_shards: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    train(tiny_cfg(tiny_shards, run, max_epochs=None, early_stop_patience=1, max_steps=400))
    rows = read_metrics(run)
    assert "early stop" in capsys.readouterr().err
    assert run_stage_main(main, ["--resume", str(run), "--no-progress"]) == 0
    assert "early stopping already ended this run" in capsys.readouterr().err and read_metrics(run) == rows
    assert run_stage_main(main, ["--resume", str(run), "--early-stop-patience", "50", "--max-epochs",
                                 str(len(rows) + 1), "--no-progress"]) == 0
    assert len(read_metrics(run)) == len(rows) + 1


def test_an_epoch_stopped_midway_must_finish_on_as_many_ranks_as_it_began(tiny_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_cfg(tiny_shards, run, max_epochs=None, max_steps=2))  # 2 of 4 steps of epoch 1
    path = run / "checkpoints" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["rng"]["ranks"] = ckpt["rng"]["ranks"] * 2  # as if two ranks had written it
    del ckpt["checksum"]
    save_checkpoint(path, ckpt)  # with the checksum of what it now holds
    with pytest.raises(FsmtlError, match="stopped 2 steps into an epoch with 2 rank"):
        build_run(TrainConfig.from_dict({**ckpt["config"], "resume": str(run), "max_steps": None}))


def test_a_fresh_run_leaves_a_wandb_folder_it_did_not_write_alone(tiny_shards: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "wandb" / "run-20260101_000000-userrun1").mkdir(parents=True)  # the user's own wandb data
    train(tiny_cfg(tiny_shards, project, max_epochs=1, wandb="disabled"))
    assert (project / "wandb" / "run-20260101_000000-userrun1").is_dir()
    train(tiny_cfg(tiny_shards, project, max_epochs=1, wandb="offline", overwrite=True))
    assert (project / "wandb" / "run-20260101_000000-userrun1").is_dir()  # --overwrite drops fsmtl's own only


def test_an_overwrite_whose_wandb_cannot_start_leaves_the_old_run_intact(tiny_shards: Path, tmp_path: Path,
                                                                        monkeypatch) -> None:
    run = tmp_path / "run"
    train(tiny_cfg(tiny_shards, run, max_epochs=1))
    before = (run / "checkpoints" / "last.pt").read_bytes()
    import wandb

    def refuse(*a, **k):
        raise RuntimeError("no API key")

    monkeypatch.setattr(wandb, "init", refuse)
    with pytest.raises(FsmtlError, match="wandb could not start"):
        train(tiny_cfg(tiny_shards, run, max_epochs=1, wandb="online", overwrite=True))
    assert (run / "checkpoints" / "last.pt").read_bytes() == before and read_metrics(run)


def test_a_cosine_resumed_with_max_epochs_none_follows_the_unbounded_length(tiny_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_cfg(tiny_shards, run, scheduler="cosine", max_epochs=2))
    assert run_stage_main(main, ["--resume", str(run), "--max-epochs", "none", "--max-steps", "16", "--no-progress"]) == 0
    assert all(r["lr"] > 0 for r in read_metrics(run))
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["cosine_length"] == 100
