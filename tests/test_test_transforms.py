"""Test-time symmetries: every task also scored with all its images rotated (and mirrored), scores averaged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fsmtl.core.cli import run_stage_main
from fsmtl.core.errors import FsmtlError
from fsmtl.eval.config import EvalConfig
from fsmtl.models import build_model
from fsmtl.pipelines.transforms import TEST_TRANSFORMS, dihedral
from fsmtl.preprocess.shard_reader import open_shards
from fsmtl.train.config import TrainConfig
from fsmtl.train.presets import PRESETS
from fsmtl.train.protocol import (
    embed_images, episode_rows, evaluate_backbone, feature_scores, gather_images, scores_accuracy,
    symmetry_class_scores,
)
from test_eval_protocol import write_run


def test_dihedral_is_numpys_rotation_of_the_mirror() -> None:
    x = torch.arange(2 * 4 * 4 * 3, dtype=torch.int64).reshape(2, 4, 4, 3)
    for turns in range(-1, 6):
        for mirror in (False, True):
            ref = np.rot90(np.flip(x.numpy(), 2) if mirror else x.numpy(), turns, (1, 2))
            out = dihedral(x, turns, mirror)
            assert out.dtype == x.dtype and out.is_contiguous()
            np.testing.assert_array_equal(out.numpy(), ref)
    assert dihedral(x, 0, False) is x
    # the eight symmetries of d4 are eight different images of an asymmetric one
    assert len({dihedral(x, t, m).numpy().tobytes() for t, m in TEST_TRANSFORMS["d4"]}) == 8
    assert dihedral(torch.zeros(1, 4, 6, 1), 2, True).shape == (1, 4, 6, 1)  # half turns keep any shape
    with pytest.raises(ValueError, match="square"):
        dihedral(torch.zeros(1, 4, 6, 1), 1, False)


def _model_and_split(tiny_shards: Path):
    shards = open_shards(tiny_shards)
    torch.manual_seed(0)
    return build_model("conv4", in_channels=3, image_size=32).eval(), shards.split("test"), shards


def test_scores_are_averaged_over_the_rotated_tasks(tiny_shards: Path) -> None:
    model, split, shards = _model_and_split(tiny_shards)
    common = dict(ways=5, shots=1, queries=3, n_tasks=12, heads=["logreg", "proto"], seed=2, batch_tasks=5)
    plain = evaluate_backbone(model, split, shards.mean, shards.std, **common)
    assert evaluate_backbone(model, split, shards.mean, shards.std, **common, transforms="none")["logreg"]["per_task"] == plain["logreg"]["per_task"]
    rot = evaluate_backbone(model, split, shards.mean, shards.std, **common, transforms="rot4")
    # by hand: the same episodes, each rotated 4 ways, scores summed, then accuracy
    rows = episode_rows(split, 5, 1, 3, 12, 2)
    images = gather_images(split, rows.reshape(-1), torch.device("cpu"))
    for head in ("logreg", "proto"):
        total = 0
        for turns, mirror in TEST_TRANSFORMS["rot4"]:
            feats = embed_images(model, dihedral(images, turns, mirror), shards.mean, shards.std, None)
            total = total + feature_scores(feats.reshape(12, 5, 4, -1), 1, [head])[head].float()
        np.testing.assert_allclose(rot[head]["per_task"], (scores_accuracy(total) * 100).tolist(), atol=1e-9)
    assert rot["proto"]["per_task"] != plain["proto"]["per_task"]  # a random conv net is not rotation invariant


class _RotationInvariant(nn.Module):
    """Features that no quarter turn or mirror changes: sorted pixel values of each channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).sort(-1).values.flatten(1)


def test_a_rotation_invariant_backbone_scores_the_same_with_and_without(tiny_shards: Path) -> None:
    _, split, shards = _model_and_split(tiny_shards)
    common = dict(ways=5, shots=2, queries=3, n_tasks=10, heads=["logreg", "proto", "ridge"], seed=5)
    plain = evaluate_backbone(_RotationInvariant(), split, shards.mean, shards.std, **common)
    d4 = evaluate_backbone(_RotationInvariant(), split, shards.mean, shards.std, **common, transforms="d4")
    for head in common["heads"]:
        np.testing.assert_allclose(d4[head]["per_task"], plain[head]["per_task"])


def test_unknown_names_and_turns_of_oblong_images_are_refused(tiny_shards: Path) -> None:
    model, split, shards = _model_and_split(tiny_shards)
    with pytest.raises(FsmtlError, match="expected one of none, flip, rot4, d4"):
        evaluate_backbone(model, split, shards.mean, shards.std, n_tasks=2, transforms="rot8")

    class Oblong:
        name = "test"
        images = np.zeros((10, 32, 48, 3), np.uint8)
        class_offsets = np.array([0, 5, 10])

    with pytest.raises(FsmtlError, match="quarter turns need square images, split test holds 32x48"):
        evaluate_backbone(model, Oblong(), shards.mean, shards.std, ways=2, shots=1, queries=1, n_tasks=2, transforms="rot4")
    # a mirror alone needs no square
    assert evaluate_backbone(nn.Flatten(), Oblong(), [0.5] * 3, [0.5] * 3, ways=2, shots=1, queries=1, n_tasks=2,
                             transforms="flip")["logreg"]["n_tasks"] == 2  # fmt: skip


def test_the_run_sets_evals_default_and_the_flag_overrides_it(tiny_shards: Path, tmp_path: Path) -> None:
    run = write_run(tmp_path / "r", tiny_shards)
    cfg = json.loads((run / "config.json").read_text())
    assert EvalConfig().for_run(cfg).transforms == "none"  # a run that does not say: none
    assert EvalConfig().for_run({**cfg, "test_transforms": "rot4"}).transforms == "rot4"
    assert EvalConfig(transforms="none").for_run({**cfg, "test_transforms": "rot4"}).transforms == "none"
    with pytest.raises(FsmtlError, match="--transforms: expected one of"):
        EvalConfig(transforms="rot3")
    with pytest.raises(FsmtlError, match="--test-transforms"):
        TrainConfig(data="x", test_transforms="rot3").check()
    assert PRESETS["omniglot"]["test_transforms"] in TEST_TRANSFORMS
    from fsmtl.eval.__main__ import main as eval_main

    out = tmp_path / "e.json"
    argv = ["--run", str(run), "--tasks", "4", "--shots", "1", "--queries", "2", "--transforms", "d4", "--json", str(out)]
    assert run_stage_main(eval_main, argv) == 0
    assert json.loads(out.read_text())["config"]["transforms"] == "d4"
    with pytest.raises(SystemExit) as e:  # argparse refuses a name not in the set
        eval_main(["--run", str(run), "--transforms", "rot3"])
    assert e.value.code == 2


def test_symmetry_classes_score_each_versions_queries_against_its_own_classes() -> None:
    # two ways, two versions, one-hot features: version k's class w is e_{2k+w}, its query too
    eye = torch.eye(4)
    versions = [torch.stack([torch.stack([eye[2 * k + w]] * 2) for w in range(2)])[None] for k in range(2)]
    # [1 task, 2 ways, 1 shot + 1 query, 4]; cosine prototypes: 1 for its own class, 0 for any other
    scores = symmetry_class_scores(versions, 1, "proto")
    assert scores.shape == (1, 2, 2)
    torch.testing.assert_close(scores[0], torch.tensor([[2.0, 0.0], [0.0, 2.0]]))  # block k for version k


def test_symmetry_classes_match_separate_fits_for_a_per_class_head_and_not_for_logreg() -> None:
    g = torch.Generator().manual_seed(0)
    versions = [torch.rand(3, 5, 4, 16, generator=g) for _ in range(4)]  # K=4 of [T=3, 5 ways, 1+3, D=16]
    views = [torch.rand(2, 3, 5, 1, 16, generator=g) for _ in range(4)]
    for v in (None, views):
        separate = sum(feature_scores(f, 1, ["proto"], None, None if v is None else v[i])["proto"].float()
                       for i, f in enumerate(versions))  # fmt: skip
        # prototypes are per class: the extra classes change nothing
        torch.testing.assert_close(symmetry_class_scores(versions, 1, "proto", None, v), separate)
    one = symmetry_class_scores(versions[:1], 1, "logreg", {"logreg": {"C": 10.0}})
    torch.testing.assert_close(one, feature_scores(versions[0], 1, ["logreg"], {"logreg": {"C": 10.0}})["logreg"].float())
    joint = symmetry_class_scores(versions, 1, "logreg")
    separate = sum(feature_scores(f, 1, ["logreg"])["logreg"].float() for f in versions)
    assert joint.shape == separate.shape == (3, 15, 5)
    assert not torch.allclose(joint, separate, atol=1e-3)  # logreg sees the other versions' classes as negatives


def test_evaluate_backbone_with_symmetry_classes(tiny_shards: Path, tmp_path: Path) -> None:
    model, split, shards = _model_and_split(tiny_shards)
    common = dict(ways=5, shots=1, queries=3, n_tasks=12, heads=["logreg", "proto"], seed=2, batch_tasks=5,
                  transforms="rot4")  # fmt: skip
    separate = evaluate_backbone(model, split, shards.mean, shards.std, **common)
    joint = evaluate_backbone(model, split, shards.mean, shards.std, **common, symmetry_classes=True)
    assert joint["proto"]["per_task"] == separate["proto"]["per_task"]
    # by hand for logreg: the same episodes under the four turns, one fit on 20 classes
    rows = episode_rows(split, 5, 1, 3, 12, 2)
    images = gather_images(split, rows.reshape(-1), torch.device("cpu"))
    feats = [embed_images(model, dihedral(images, t, m), shards.mean, shards.std, None).reshape(12, 5, 4, -1)
             for t, m in TEST_TRANSFORMS["rot4"]]  # fmt: skip
    np.testing.assert_allclose(joint["logreg"]["per_task"],
                               (scores_accuracy(symmetry_class_scores(feats, 1, "logreg")) * 100).tolist(), atol=1e-9)  # fmt: skip
    with pytest.raises(FsmtlError, match="symmetry_classes: expected True or False"):
        evaluate_backbone(model, split, shards.mean, shards.std, n_tasks=2, symmetry_classes="yes")
    # fsmtl eval: the run's setting by default, the flag overrides it; the table says so
    run = write_run(tmp_path / "r", tiny_shards)
    cfg = json.loads((run / "config.json").read_text())
    assert EvalConfig().for_run(cfg).symmetry_classes is False
    assert EvalConfig().for_run({**cfg, "test_symmetry_classes": True}).symmetry_classes is True
    assert EvalConfig(symmetry_classes=False).for_run({**cfg, "test_symmetry_classes": True}).symmetry_classes is False
    assert PRESETS["omniglot"]["test_symmetry_classes"] is True
    with pytest.raises(FsmtlError, match="--symmetry-classes: expected True or False, got 'yes'"):
        EvalConfig(symmetry_classes="yes")
    from fsmtl.eval.__main__ import main as eval_main

    out = tmp_path / "e.json"
    argv = ["--run", str(run), "--tasks", "4", "--shots", "1", "--queries", "2", "--transforms", "rot4",
            "--symmetry-classes", "--json", str(out)]  # fmt: skip
    assert run_stage_main(eval_main, argv) == 0
    doc = json.loads(out.read_text())
    assert doc["config"]["symmetry_classes"] is True
    from fsmtl.eval.evaluate import results_table

    assert "scores averaged over rot4 (its versions of a class as classes)" in results_table(doc)


def test_bad_features_are_refused_in_the_name_of_the_function_called() -> None:
    from fsmtl.train.protocol import evaluate_features

    flat = torch.zeros(2, 5, 4)  # no D axis: [T, ways, per] only
    good = torch.randn(2, 5, 3, 8)
    for call, who in ((lambda: feature_scores(flat, 1, ["proto"]), "feature_scores"),
                      (lambda: evaluate_features(flat, 1, ["proto"]), "evaluate_features"),
                      (lambda: symmetry_class_scores([good, good], 3, "proto"), "symmetry_class_scores")):  # fmt: skip
        with pytest.raises(FsmtlError, match=rf"^{who}: (features must be float|shots must be an integer in 1\.\.2)"):
            call()
