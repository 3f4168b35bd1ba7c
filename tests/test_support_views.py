"""Test-time augmentation of the support set: the feature heads also fit on augmented copies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fsmtl.core.cli import run_stage_main
from fsmtl.eval.config import EvalConfig
from fsmtl.eval.evaluate import support_views_for
from fsmtl.models import build_model
from fsmtl.preprocess.shard_reader import open_shards
from fsmtl.train.protocol import SupportViews, evaluate_backbone, evaluate_features
from test_eval_protocol import write_run


def test_views_add_support_images_of_the_same_label() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 2, 1 + 4, 8, generator=g)  # 3 tasks, 2 ways, 1 shot + 4 queries
    # views that sit exactly on a query of their own class pull each centroid towards it
    views = feats[:, :, 1:2].unsqueeze(0).expand(2, -1, -1, -1, -1).clone()  # [V=2, T, ways, shots=1, D]
    with_views = evaluate_features(feats, 1, ["proto"], None, views)["proto"]
    assert with_views.shape == (3,) and float(with_views.min()) >= 0.5
    # views equal to the support images change no centroid: the same accuracy as without
    same = feats[:, :, :1].unsqueeze(0).expand(3, -1, -1, -1, -1)
    assert torch.equal(evaluate_features(feats, 1, ["proto"], None, same)["proto"], evaluate_features(feats, 1, ["proto"])["proto"])


def test_backbone_evaluation_with_views_is_seeded_and_zero_views_is_the_plain_protocol(tiny_shards: Path) -> None:
    split = open_shards(tiny_shards).split("test")
    shards = open_shards(tiny_shards)
    torch.manual_seed(0)
    model = build_model("conv4", in_channels=3, image_size=32)
    common = dict(ways=5, shots=1, queries=3, n_tasks=12, heads=["logreg", "proto"], seed=4, batch_tasks=5)
    plain = evaluate_backbone(model, split, shards.mean, shards.std, **common)
    none = evaluate_backbone(model, split, shards.mean, shards.std, **common, support_views=SupportViews(0))
    assert plain["logreg"]["per_task"] == none["logreg"]["per_task"]
    sv = SupportViews(3, pad=4, degrees=10.0, scale=0.1, shear=5.0)
    a = evaluate_backbone(model, split, shards.mean, shards.std, **common, support_views=sv)
    b = evaluate_backbone(model, split, shards.mean, shards.std, **{**common, "batch_tasks": 12}, support_views=sv)
    assert a["proto"]["per_task"] != plain["proto"]["per_task"]  # the views change the fits
    # the same views whatever the batching (drawn per chunk from one stream: same chunking, same views)
    c = evaluate_backbone(model, split, shards.mean, shards.std, **common, support_views=sv)
    assert a["proto"]["per_task"] == c["proto"]["per_task"]
    assert len(b["proto"]["per_task"]) == 12
    # elastic views (a run trained with --elastic-px): seeded, and other views than affine ones
    se = SupportViews(3, pad=4, degrees=10.0, scale=0.1, shear=5.0, elastic_px=1.5)
    e1 = evaluate_backbone(model, split, shards.mean, shards.std, **common, support_views=se)
    e2 = evaluate_backbone(model, split, shards.mean, shards.std, **common, support_views=se)
    assert e1["proto"]["per_task"] == e2["proto"]["per_task"]
    assert e1["proto"]["per_task"] != a["proto"]["per_task"]


def test_eval_takes_the_runs_default_and_the_flag(tiny_shards: Path, tmp_path: Path) -> None:
    run = write_run(tmp_path / "r", tiny_shards)
    cfg = json.loads((run / "config.json").read_text())
    assert EvalConfig().for_run({**cfg, "test_support_views": 4}).support_views == 4
    assert EvalConfig(support_views=0).for_run({**cfg, "test_support_views": 4}).support_views == 0
    assert support_views_for({"augment": "lee", "affine_degrees": 12.0}, (28, 28, 1), 2) == SupportViews(2, 4, 12.0, 0.0, 0.0)
    assert support_views_for({"augment": "lee", "elastic_px": 1.5}, (32, 32, 1), 2).elastic_px == 1.5
    assert support_views_for({"augment": "none"}, (84, 84, 3), 2).pad == 0 and support_views_for({}, (84, 84, 3), 0) is None
    from fsmtl.eval.__main__ import main as eval_main

    out = tmp_path / "e.json"
    assert run_stage_main(eval_main, ["--run", str(run), "--tasks", "6", "--shots", "1", "--queries", "2",
                                      "--support-views", "2", "--json", str(out)]) == 0  # fmt: skip
    assert json.loads(out.read_text())["config"]["support_views"] == 2
    assert run_stage_main(eval_main, ["--run", str(run), "--support-views", "-1"]) == 2
