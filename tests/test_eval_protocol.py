"""The evaluation protocol end to end: checkpoints per the contract, fixed episodes, CLI, Python API."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fsmtl.eval import adapt, evaluate_backbone, evaluate_features, load_run
from fsmtl.models.heads.finetune import FinetuneConfig, finetune_predict
from fsmtl.train.protocol import episode_rows
from fsmtl.cli import main as fsmtl_main
from fsmtl.core.errors import FsmtlError
from fsmtl.pipelines.transforms import normalize_batch
from fsmtl.preprocess.shard_reader import load_split, open_shards


def write_run(run: Path, data: Path, precision: str = "fp32", seed: int = 0) -> Path:
    """A run directory holding best.pt and last.pt in the trainer's checkpoint format."""
    from fsmtl.models import build_model

    shards = open_shards(data)
    h, _, c = shards.image_shape
    torch.manual_seed(seed)
    model = build_model("conv4", in_channels=c, image_size=h)
    config = {"data": str(data), "precision": precision, "model": "conv4"}
    state = {
        "format": "fsmtl-checkpoint", "version": 1, "model_name": "conv4", "model_kwargs": {},
        "model": model.state_dict(), "heads": torch.zeros(8, 4), "optimizer": {}, "scheduler": {},
        "scaler": {}, "rng": {}, "epoch": 3, "step": 30, "best_val_acc": 0.5, "config": config,
        "data_meta": {"benchmark": "synthetic", "image_shape": list(shards.image_shape),
                      "mean": list(shards.mean), "std": list(shards.std), "n_train_classes": 8},
    }  # fmt: skip
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(state, run / "checkpoints" / "best.pt")
    torch.save(state, run / "checkpoints" / "last.pt")
    (run / "config.json").write_text(json.dumps(config))
    return run


@pytest.fixture(scope="module")
def run_dir(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("runs") / "r1", tiny_shards)


def test_episodes_depend_only_on_the_seed(tiny_shards):
    split = load_split(tiny_shards, "test")
    a = episode_rows(split, 5, 1, 4, 20, seed=3)
    assert torch.equal(a, episode_rows(split, 5, 1, 4, 20, seed=3))
    assert not torch.equal(a, episode_rows(split, 5, 1, 4, 20, seed=4))


def test_every_head_and_batch_size_scores_the_same_tasks(run_dir, tiny_shards):
    run = load_run(run_dir)
    split = load_split(tiny_shards, "test")
    kw = dict(ways=5, shots=2, queries=3, n_tasks=12, seed=1, device="cpu")
    a = evaluate_backbone(run.model, split, run.mean, run.std, heads=["logreg"], batch_tasks=5, **kw)
    b = evaluate_backbone(run.model, split, run.mean, run.std, heads=["proto", "logreg"], batch_tasks=12, **kw)
    np.testing.assert_allclose(a["logreg"]["per_task"], b["logreg"]["per_task"])
    r = b["proto"]
    assert set(b) == {"proto", "logreg"} and r["n_tasks"] == 12
    acc = np.array(r["per_task"])
    assert ((acc >= 0) & (acc <= 100)).all()
    assert r["acc"] == pytest.approx(acc.mean())
    assert r["ci95"] == pytest.approx(1.96 * acc.std(ddof=1) / math.sqrt(12))


def test_evaluate_features_scores_the_first_shots_of_each_way_as_support():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(4, 3, 5, 6, generator=g, dtype=torch.float64)  # [T, ways, shots+queries, D]
    out = evaluate_features(feats, shots=2, heads=["logreg"])
    support = feats[:, :, :2].reshape(4, 6, 6)
    query = feats[:, :, 2:].reshape(4, 9, 6)
    pred = adapt(support, torch.arange(3).repeat_interleave(2).expand(4, -1), query)
    expected = (pred == torch.arange(3).repeat_interleave(3)).double().mean(1)
    torch.testing.assert_close(out["logreg"], expected)


def test_finetune_head_restores_the_backbone_exactly(run_dir, tiny_shards):
    run = load_run(run_dir)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    split = load_split(tiny_shards, "test")
    images = torch.from_numpy(np.array(split.images[:10]))
    x = normalize_batch(images, run.mean, run.std)
    pred = finetune_predict(run.model, x[:5], torch.arange(5), x[5:], 5, FinetuneConfig(steps=3))
    assert pred.shape == (5,) and pred.dtype == torch.int64
    after = run.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not run.model.training and not any(p.requires_grad for p in run.model.parameters())


def test_finetune_runs_inside_evaluate_backbone(run_dir, tiny_shards):
    run = load_run(run_dir)
    split = load_split(tiny_shards, "test")
    out = evaluate_backbone(run.model, split, run.mean, run.std, ways=3, shots=1, queries=2, n_tasks=2,
                            heads=["finetune", "proto"], finetune=FinetuneConfig(steps=2))  # fmt: skip
    assert out["finetune"]["n_tasks"] == 2 and 0 <= out["finetune"]["acc"] <= 100


def test_embed_applies_the_runs_normalisation(run_dir, tiny_shards):
    run = load_run(run_dir, checkpoint="last")
    images = load_split(tiny_shards, "val").images[:7]
    feats = run.embed(images)
    with torch.no_grad():
        ref = run.model(normalize_batch(torch.from_numpy(np.array(images)), run.mean, run.std))
    assert feats.dtype == torch.float32 and feats.shape == ref.shape
    torch.testing.assert_close(feats, ref)
    torch.testing.assert_close(run.embed(torch.from_numpy(np.array(images)), batch_size=3), ref)


def test_embed_rejects_wrong_dtype_and_image_shape(run_dir):
    run = load_run(run_dir)
    with pytest.raises(FsmtlError, match="uint8"):
        run.embed(np.zeros((2, 32, 32, 3), dtype=np.float32))
    with pytest.raises(FsmtlError, match="takes images"):
        run.embed(np.zeros((2, 28, 28, 3), dtype=np.uint8))


def test_load_run_names_the_file_when_a_checkpoint_is_missing_or_foreign(tmp_path):
    with pytest.raises(FsmtlError, match="checkpoint not found"):
        load_run(tmp_path)
    bad = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, bad)
    with pytest.raises(FsmtlError, match="expected format 'fsmtl-checkpoint'"):
        load_run(tmp_path, checkpoint=str(bad))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(FsmtlError, match="junk.pt: not an fsmtl checkpoint: not a torch file"):
        load_run(junk)


def test_a_file_holding_objects_beyond_tensors_is_refused_in_one_plain_line(run_dir, tmp_path, capsys):
    foreign = tmp_path / "foreign.pt"
    torch.save({"where": Path("somewhere")}, foreign)  # a pickled class: weights_only=True refuses it
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    for path in (foreign, text):
        assert fsmtl_main(["eval", "--run", str(run_dir), "--checkpoint", str(path), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"fsmtl: error: {path}: not an fsmtl checkpoint") and err.count("\n") == 1
        assert "\x1b" not in err and "weights_only=False" not in err and "trust" not in err
    assert fsmtl_main(["eval", "--run", str(run_dir), "--checkpoint", str(foreign), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "beyond tensors and plain containers (found pathlib." in err and "weights_only=True" in err


def test_cli_prints_a_table_and_writes_json_per_shot_and_head(run_dir, tmp_path, capsys):
    out = tmp_path / "report.json"
    rc = fsmtl_main(["eval", "--run", str(run_dir), "--tasks", "6", "--shots", "1", "2", "--queries", "3",
                     "--head", "logreg", "proto", "svm", "--device", "cpu", "--json", str(out)])  # fmt: skip
    assert rc == 0
    doc = json.loads(out.read_text())
    assert set(doc["results"]) == {"1", "2"} and set(doc["results"]["2"]) == {"logreg", "proto", "svm"}
    assert doc["results"]["1"]["logreg"]["n_tasks"] == 6 and doc["split"] == "test"
    assert "logreg" in capsys.readouterr().out
    r = doc["results"]["2"]
    assert all(r[h]["seconds"] > 0 and r[h]["embed_seconds"] == r["logreg"]["embed_seconds"] for h in r)
    assert len({r[h]["seconds"] for h in r}) == 3  # each head timed on its own


def test_report_of_a_checkpoint_file_is_named_after_it_in_its_run(run_dir, tmp_path, capsys):
    ckpt = run_dir / "checkpoints" / "last.pt"
    assert fsmtl_main(["eval", "--run", str(ckpt), "--tasks", "2", "--shots", "1", "--queries", "2", "--device", "cpu"]) == 0
    assert (run_dir / "reports" / "eval_test_last.json").is_file()


def test_a_checkpoint_from_another_run_never_overwrites_the_runs_own_report(tiny_shards, tmp_path, capsys):
    a = write_run(tmp_path / "A", tiny_shards, seed=0)
    b = write_run(tmp_path / "B", tiny_shards, seed=1)
    args = ["eval", "--tasks", "2", "--shots", "1", "--queries", "2", "--device", "cpu"]
    assert fsmtl_main([*args, "--run", str(a)]) == 0
    own = a / "reports" / "eval_test_best.json"
    before = own.read_text()
    capsys.readouterr()
    assert fsmtl_main([*args, "--run", str(a), "--checkpoint", str(b / "checkpoints" / "best.pt")]) == 0
    assert own.read_text() == before  # A's own report is untouched
    (other,) = (a / "reports").glob("eval_test_best_from_B-*.json")
    assert f"wrote {other}" in capsys.readouterr().out
    doc = json.loads(other.read_text())
    assert doc["checkpoint"] == os.path.abspath(b / "checkpoints" / "best.pt")
    assert json.loads(before)["checkpoint"] == os.path.abspath(a / "checkpoints" / "best.pt")


def test_a_checkpoint_file_of_the_run_itself_keeps_the_usual_report_name(run_dir):
    from fsmtl.eval.config import EvalConfig
    from fsmtl.eval.evaluate import default_report_path

    cfg = EvalConfig(run=str(run_dir), checkpoint=str(run_dir / "checkpoints" / "last.pt"))
    assert default_report_path(cfg, run_dir / "checkpoints" / "last.pt") == run_dir / "reports" / "eval_test_last.json"


def test_an_unwritable_report_path_fails_before_the_evaluation(run_dir, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    rc = fsmtl_main(["eval", "--run", str(run_dir), "--tasks", "2", "--shots", "1", "--json", str(blocker / "r.json")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--json" in err and "Traceback" not in err


def test_cli_writes_the_default_report_and_honours_data_override(run_dir, tiny_shards, tmp_path):
    rc = fsmtl_main(["eval", "--run", str(run_dir), "--data", str(tiny_shards), "--tasks", "3", "--shots", "1",
                     "--queries", "2", "--split", "val", "--device", "cpu"])  # fmt: skip
    assert rc == 0
    report = run_dir / "reports" / "eval_val_best.json"  # --data is the run's own data: the usual report
    assert json.loads(report.read_text())["data"] == str(tiny_shards.resolve())
    import shutil

    other = tmp_path / "copy"
    shutil.copytree(tiny_shards, other)
    assert fsmtl_main(["eval", "--run", str(run_dir), "--data", str(other), "--tasks", "3", "--shots", "1",
                       "--queries", "2", "--split", "val", "--device", "cpu"]) == 0  # fmt: skip
    (mine,) = (run_dir / "reports").glob("eval_val_best_on_copy-*.json")  # its own file, not over the run's
    assert json.loads(mine.read_text())["data"] == str(other.resolve())


def test_cli_bad_input_is_one_line_and_exit_code_2(run_dir, tmp_path, capsys):
    assert fsmtl_main(["eval", "--run", str(tmp_path / "missing")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert fsmtl_main(["eval", "--run", str(run_dir), "--data", str(tmp_path), "--tasks", "2"]) == 2
    assert fsmtl_main(["eval", "--run", str(run_dir), "--shots", "40", "--tasks", "2", "--device", "cpu"]) == 2
    assert "smallest class" in capsys.readouterr().err


def test_bf16_run_is_embedded_under_bf16_autocast(tiny_shards, tmp_path):
    run = load_run(write_run(tmp_path / "bf", tiny_shards, precision="bf16"), device="cpu")
    assert run.amp_dtype == torch.bfloat16
    split = load_split(tiny_shards, "test")
    out = evaluate_backbone(run.model, split, run.mean, run.std, ways=5, shots=1, queries=2, n_tasks=4,
                            dtype=run.amp_dtype)  # fmt: skip
    assert out["logreg"]["n_tasks"] == 4


def test_eval_reads_a_checkpoint_written_by_the_real_trainer(tiny_shards, tmp_path):
    train_run = pytest.importorskip("fsmtl.train.run")
    from fsmtl.train.config import TrainConfig

    out = tmp_path / "trained"
    cfg = TrainConfig(data=str(tiny_shards), out=str(out), model="conv4", meta_batch_size=2, epoch_length=4,
                      val_epoch_length=4, test_queries=5, max_epochs=1, wandb="disabled", progress=False,
                      log_every=2, precision="fp32")  # fmt: skip
    train_run.train(cfg)
    report = tmp_path / "trained.json"
    rc = fsmtl_main(["eval", "--run", str(out), "--checkpoint", "last", "--tasks", "4", "--shots", "1",
                     "--queries", "3", "--device", "cpu", "--json", str(report)])  # fmt: skip
    assert rc == 0
    assert json.loads(report.read_text())["results"]["1"]["logreg"]["n_tasks"] == 4
    # without --ways/--queries the task shape is the run's own (test_ways 5, test_queries 5 here)
    rc = fsmtl_main(["eval", "--run", str(out), "--checkpoint", "last", "--tasks", "2", "--shots", "1",
                     "--device", "cpu", "--json", str(report)])  # fmt: skip
    assert rc == 0
    doc = json.loads(report.read_text())
    assert (doc["config"]["ways"], doc["config"]["queries"]) == (5, 5)


def test_evaluate_backbone_rejects_unknown_heads_before_embedding(run_dir, tiny_shards):
    run = load_run(run_dir)
    with pytest.raises(FsmtlError, match="heads: expected some of"):
        evaluate_backbone(run.model, load_split(tiny_shards, "test"), run.mean, run.std, heads=["knn"])


def test_run_predict_takes_images_for_feature_heads_and_for_finetune(run_dir, tiny_shards):
    run = load_run(run_dir)
    test = load_split(tiny_shards, "test")
    offs = test.class_offsets
    rows = [int(offs[c]) + i for c in range(3) for i in range(4)]
    images = np.asarray(test.images)[rows]
    is_support = np.tile(np.arange(4) < 2, 3)
    support, query = images[is_support], images[~is_support]
    labels = np.repeat(np.arange(3), 2)
    pred = run.predict(support, labels, query, head="logreg")
    ref = adapt(run.embed(support), torch.as_tensor(labels), run.embed(query), head="logreg")
    assert torch.equal(pred, ref) and pred.shape == (6,)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    tuned = run.predict(support, labels, query, head="finetune", steps=2)
    assert tuned.shape == (6,) and int(tuned.min()) >= 0 and int(tuned.max()) <= 2
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())
    with pytest.raises(FsmtlError, match="head finetune"):
        run.predict(support, labels, query, head="finetune", momentum=0.9)


def test_finetune_works_under_no_grad_and_inference_mode(run_dir, tiny_shards):
    run = load_run(run_dir)
    test = load_split(tiny_shards, "test")
    rows = [int(test.class_offsets[c]) + i for c in range(2) for i in range(3)]
    images = np.asarray(test.images)[rows]
    support, query, labels = images[[0, 1, 3, 4]], images[[2, 5]], np.array([0, 0, 1, 1])
    with torch.no_grad():
        a = run.predict(support, labels, query, head="finetune", steps=1)
    with torch.inference_mode():
        b = run.predict(support, labels, query, head="finetune", steps=1)
    assert torch.equal(a, b) and a.shape == (2,)


def test_eval_notes_when_an_accuracy_is_not_a_held_out_one() -> None:
    from fsmtl.eval.evaluate import optimism_notes

    assert optimism_notes({"trainval": False, "val_split": "auto"}, "test", "best.pt") == []
    assert optimism_notes({"trainval": False}, "val", "best.pt") == []  # a run from before val_split
    tv = {"trainval": True, "val_split": "auto"}  # the seed's --trainval: best.pt chosen on test
    assert "optimistic" in optimism_notes(tv, "test", "best.pt")[0]
    assert optimism_notes(tv, "test", "last.pt") == []
    assert "not a held-out one" in optimism_notes(tv, "val", "last.pt")[0]
    assert optimism_notes({**tv, "val_split": "none"}, "test", "best.pt") == []
