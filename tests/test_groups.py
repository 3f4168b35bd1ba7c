"""Tasks within one group (an Omniglot alphabet, a tiered-ImageNet category): sampling, the
loader, validation and evaluation episodes, and the errors for impossible requests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fsmtl.core.cli import run_stage_main
from fsmtl.core.errors import FsmtlError
from fsmtl.pipelines.config import PipelineConfig
from fsmtl.pipelines.episodes import class_groups, sample_episode_indices, sample_grouped_classes
from fsmtl.pipelines.loader import build_task_loader
from fsmtl.pipelines.planning import plan_batch
from fsmtl.preprocess.shard_reader import open_shards
from fsmtl.preprocess.shard_writer import ShardWriter
from fsmtl.train.protocol import episode_rows

# train: groups A (5 classes), B (4), C (2); val: D (5), E (3)
TRAIN_GROUPS = ["B", "A", "A", "C", "B", "A", "B", "A", "C", "B", "A"]
VAL_GROUPS = ["D", "E", "D", "D", "E", "D", "E", "D"]


def _split(w: ShardWriter, name: str, groups: list[str], rng: np.random.Generator, per_class: int = 8) -> None:
    n = len(groups)
    images = rng.integers(0, 256, size=(n * per_class, 16, 16, 1), dtype=np.uint8)
    labels = np.repeat(np.arange(n), per_class)
    w.write_split(name, images, labels, [f"{g}/c{i}" for i, g in enumerate(groups)], groups)


@pytest.fixture(scope="module")
def grouped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("grouped") / "shards"
    rng = np.random.default_rng(0)
    with ShardWriter(out, "imagefolder") as w:
        _split(w, "train", TRAIN_GROUPS, rng)
        _split(w, "val", VAL_GROUPS, rng)
        _split(w, "test", VAL_GROUPS, rng)
        return w.commit()


def test_class_groups_lists_each_groups_classes() -> None:
    g = class_groups(TRAIN_GROUPS)
    assert g.names == ("A", "B", "C") and g.sizes.tolist() == [5, 4, 2]
    assert g.members[0, :5].tolist() == [1, 2, 5, 7, 10] and g.members[2].tolist() == [3, 8, -1, -1, -1]
    assert g.too_small(3) == ["C (2)"]
    with pytest.raises(ValueError, match="has no class groups"):
        class_groups(None, "split 'train'")


def test_every_task_draws_its_classes_from_one_group_and_small_groups_are_left_out() -> None:
    g = class_groups(TRAIN_GROUPS)
    classes = sample_grouped_classes(g, 2000, 3, torch.Generator().manual_seed(0))
    of = np.array(TRAIN_GROUPS)[classes.numpy()]
    assert (of == of[:, :1]).all()  # one group a task
    assert all(len(set(row)) == 3 for row in classes.tolist())  # distinct classes
    used = {row[0] for row in of}
    assert used == {"A", "B"}  # C has 2 classes: no 3-way task within it
    counts = {k: int((of[:, 0] == k).sum()) for k in used}
    assert abs(counts["A"] - counts["B"]) < 200  # groups drawn uniformly (1000 +- ~3 sigma)
    # every class of a group is drawn (the keys past a group's size take no part)
    assert set(classes[of[:, 0] == "A"].reshape(-1).tolist()) == {1, 2, 5, 7, 10}


def test_grouped_sampling_is_seeded_and_reproducible() -> None:
    g = class_groups(TRAIN_GROUPS)
    offsets = torch.arange(0, 8 * 12, 8, dtype=torch.int64)  # 11 classes x 8 images
    a = sample_episode_indices(offsets, 50, 4, 3, torch.Generator().manual_seed(5), g)
    b = sample_episode_indices(offsets, 50, 4, 3, torch.Generator().manual_seed(5), g)
    c = sample_episode_indices(offsets, 50, 4, 3, torch.Generator().manual_seed(6), g)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    rows, classes = a
    assert ((rows // 8) == classes.unsqueeze(-1)).all()  # each way's rows are its class's
    assert (np.array(TRAIN_GROUPS)[classes.numpy()] == np.array(TRAIN_GROUPS)[classes[:, :1].numpy()]).all()


def test_ways_larger_than_every_group_is_an_error_naming_the_largest() -> None:
    g = class_groups(TRAIN_GROUPS)
    with pytest.raises(ValueError, match=r"6-way tasks within one group: the largest group, 'A', has 5 classes"):
        sample_grouped_classes(g, 1, 6, torch.Generator())


def test_the_loader_plans_grouped_batches(grouped: Path) -> None:
    split = open_shards(grouped).split("train")
    cfg = PipelineConfig(ways=4, shots=2, queries=1, tasks_per_batch=5, within_group=True, augment="none", prefetch=False)
    with build_task_loader(split, [0.5], [0.25], cfg) as loader:
        for _ in range(3):
            batch = next(loader)
            per_task = batch.global_class.view(5, -1)
            groups = np.array(split.categories)[per_task.numpy()]
            assert (groups == groups[:, :1]).all() and set(groups[:, 0]) <= {"A", "B"}
    # the same plan from plan_batch directly: a stream setting, so grouped and not differ
    offsets = torch.from_numpy(split.class_offsets)
    free = plan_batch(offsets, PipelineConfig(ways=4, shots=2, queries=1, augment="none"), 2, torch.Generator().manual_seed(1))
    assert len(set(np.array(split.categories)[free.global_class.view(6, -1).numpy()].reshape(-1))) >= 2


def test_loader_errors_for_splits_without_groups_and_ways_past_every_group(grouped: Path, tiny_shards: Path) -> None:
    split = open_shards(grouped).split("train")
    with pytest.raises(FsmtlError, match=r"within_group: split 'train': .*largest group, 'A', has 5 classes"):
        build_task_loader(split, [0.5], [0.25], PipelineConfig(ways=6, shots=1, queries=1, within_group=True))
    plain = open_shards(tiny_shards).split("train")
    with pytest.raises(FsmtlError, match="has no class groups"):
        build_task_loader(plain, [0.5] * 3, [0.25] * 3, PipelineConfig(ways=2, shots=1, queries=1, within_group=True))


def test_evaluation_episodes_within_groups_are_fixed_by_the_seed(grouped: Path) -> None:
    split = open_shards(grouped).split("test")
    a = episode_rows(split, 3, 1, 2, 40, seed=3, within_group=True)
    assert torch.equal(a, episode_rows(split, 3, 1, 2, 40, seed=3, within_group=True))
    classes = np.asarray(split.labels)[a[:, :, 0].numpy()]
    groups = np.array(split.categories)[classes]
    assert (groups == groups[:, :1]).all() and {"D", "E"} == set(groups[:, 0])
    assert episode_rows(split, 5, 1, 2, 4, seed=0, within_group=True).shape == (4, 5, 3)  # only D has 5
    with pytest.raises(FsmtlError, match="6-way tasks within one group: the largest group, 'D', has 5"):
        episode_rows(split, 6, 1, 2, 4, seed=0, within_group=True)


def test_train_and_eval_commands_take_the_flags_and_refuse_impossible_requests(grouped: Path, tiny_shards: Path, tmp_path: Path, capsys) -> None:
    from fsmtl.eval.__main__ import main as eval_main
    from fsmtl.train.__main__ import main as train_main

    base = ["--data", str(grouped), "--model", "conv4", "--meta-batch-size", "2", "--epoch-length", "4",
            "--val-epoch-length", "4", "--test-queries", "2", "--max-epochs", "1", "--wandb", "disabled",
            "--no-progress", "--precision", "fp32", "--train-shots", "2", "--train-queries", "1"]  # fmt: skip
    out = tmp_path / "run"
    argv = [*base, "--out", str(out), "--train-within-group", "--val-within-group", "--train-ways", "4", "--test-ways", "3"]
    assert run_stage_main(train_main, argv) == 0
    import json

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train_within_group"] is True and cfg["val_within_group"] is True
    # eval follows the run's validation protocol unless told otherwise, and records it
    report = tmp_path / "r.json"
    assert run_stage_main(eval_main, ["--run", str(out), "--tasks", "20", "--shots", "1", "--json", str(report)]) == 0
    doc = json.loads(report.read_text())
    assert doc["config"]["within_group"] is True and doc["config"]["ways"] == 3
    assert "3-way within one group" in capsys.readouterr().out
    assert run_stage_main(eval_main, ["--run", str(out), "--tasks", "20", "--shots", "1", "--ways", "6",
                                      "--json", str(tmp_path / "x.json")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "6-way tasks within one group: the largest group, 'D', has 5 classes" in err
    # impossible training requests: one line, nothing written
    bad = tmp_path / "bad"
    assert run_stage_main(train_main, [*base, "--out", str(bad), "--train-within-group", "--train-ways", "6"]) == 2
    err = capsys.readouterr().err
    assert "--train-within-group --train-ways 6" in err and "'A', has 5 classes" in err and err.count("\n") == 1
    assert run_stage_main(train_main, [*base, "--out", str(bad), "--val-within-group", "--test-ways", "6"]) == 2
    assert "'D', has 5 classes" in capsys.readouterr().err
    assert run_stage_main(train_main, [*base, "--data", str(tiny_shards), "--out", str(bad), "--train-within-group"]) == 2
    assert "has no class groups" in capsys.readouterr().err
    assert not (bad / "checkpoints").exists() and not (bad / "metrics.jsonl").exists()
