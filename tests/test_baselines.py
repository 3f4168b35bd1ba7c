"""Meta-learning baselines: MetaOptNet-SVM, ANIL and MAML losses, and training with them end to end."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fsmtl.models.heads import adapt
from fsmtl.core.cli import run_stage_main
from fsmtl.core.errors import FsmtlError
from fsmtl.models import build_model
from fsmtl.train.__main__ import main as train_main
from fsmtl.train.algorithms import get_algorithm
from fsmtl.train.shape import StepShape
from fsmtl.train.loop import TrainNet
from fsmtl.train.meta_baselines import anil_loss, maml_step, metaoptnet_loss, split_support_query, svm_query_scores
from fsmtl.train.runlog import read_metrics
from conftest import optional_import

SHAPE = StepShape(n_tasks=2, ways=3, shots=2, queries=3, norm=False)


def separable_inputs(s: StepShape, dim: int, seed: int) -> torch.Tensor:
    """float [T*ways*(shots+queries), dim]: per task, one well-separated centre per way plus noise."""
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(s.n_tasks, s.ways, 1, dim, generator=g)
    x = centres + 0.3 * torch.randn(s.n_tasks, s.ways, s.per_class, dim, generator=g)
    return x.reshape(-1, dim)


def dummy_labels(s: StepShape) -> tuple[torch.Tensor, torch.Tensor]:
    label = torch.arange(s.ways).repeat_interleave(s.per_class).repeat(s.n_tasks)
    return label.clone(), label  # global_class, label (unused by these baselines)


def test_metaoptnet_loss_decreases_on_a_tiny_separable_problem() -> None:
    torch.manual_seed(0)
    x = separable_inputs(SHAPE, 8, seed=0)
    proj = torch.nn.Linear(8, 6, bias=False)
    opt = torch.optim.SGD(proj.parameters(), lr=0.05)
    gc, label = dummy_labels(SHAPE)
    losses = []
    for _ in range(15):
        loss, _ = metaoptnet_loss(proj(x), torch.empty(0, 6), gc, label, SHAPE)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_metaoptnet_gradient_reaches_the_features_finite_and_nonzero() -> None:
    feats = separable_inputs(SHAPE, 6, seed=1).requires_grad_(True)
    gc, label = dummy_labels(SHAPE)
    loss, acc = metaoptnet_loss(feats, torch.empty(0, 6), gc, label, SHAPE)
    loss.backward()
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0
    assert 0.0 <= acc.item() <= 1.0


def test_metaoptnet_predictions_match_the_eval_svm_head_on_the_same_features() -> None:
    g = torch.Generator().manual_seed(2)
    s = StepShape(n_tasks=4, ways=5, shots=3, queries=4, norm=False)
    feats = torch.randn(s.n_tasks * s.ways * s.per_class, 16, generator=g) + 0.5
    ours = svm_query_scores(feats, s, C=0.1, iters=300).argmax(-1)
    sup, qry = split_support_query(feats, s)
    y = torch.arange(s.ways).repeat_interleave(s.shots).expand(s.n_tasks, -1)
    theirs = adapt(sup, y, qry, head="svm", C=0.1, iters=300, normalize=False)
    assert torch.equal(ours, theirs)


def test_metaoptnet_runs_in_float32_under_bf16_autocast() -> None:
    feats = separable_inputs(SHAPE, 6, seed=3).to(torch.bfloat16).requires_grad_(True)
    gc, label = dummy_labels(SHAPE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = metaoptnet_loss(feats, torch.empty(0, 6), gc, label, SHAPE)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(feats.grad.float()).all()


def test_anil_loss_gives_finite_gradients_to_features_and_head_init() -> None:
    optional_import("learn2learn")
    feats = separable_inputs(SHAPE, 6, seed=4).requires_grad_(True)
    heads = (0.1 * torch.randn(5, 6, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    gc, label = dummy_labels(SHAPE)
    loss, acc = anil_loss(feats, heads, gc, label, SHAPE, inner_lr=0.1, steps=3)
    loss.backward()
    for grad in (feats.grad, heads.grad[: SHAPE.ways]):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert heads.grad[SHAPE.ways :].abs().sum() == 0  # only the first `ways` rows are the head
    assert 0.0 <= acc.item() <= 1.0


def test_anil_inner_steps_lower_the_query_loss_on_separable_features() -> None:
    optional_import("learn2learn")
    feats = separable_inputs(SHAPE, 6, seed=5)
    heads = torch.zeros(3, 6, requires_grad=True)
    gc, label = dummy_labels(SHAPE)
    before, _ = anil_loss(feats, heads, gc, label, SHAPE, inner_lr=0.05, steps=0)
    after, _ = anil_loss(feats, heads, gc, label, SHAPE, inner_lr=0.05, steps=5)
    assert after.item() < before.item()


def test_maml_step_gives_finite_gradients_to_every_backbone_parameter_and_the_head() -> None:
    optional_import("learn2learn")
    torch.manual_seed(0)
    s = StepShape(n_tasks=2, ways=2, shots=1, queries=2, norm=False)
    backbone = build_model("conv4", image_size=16)
    feats_dim = backbone(torch.zeros(1, 3, 16, 16)).shape[1]
    heads = torch.nn.Parameter(0.01 * torch.randn(4, feats_dim))
    images = torch.randn(s.n_tasks * s.ways * s.per_class, 3, 16, 16)
    gc, label = dummy_labels(s)
    loss, acc = maml_step(backbone, heads, images, gc, label, s, inner_lr=0.01, steps=2, first_order=True)
    loss.backward()
    for name, p in backbone.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert torch.isfinite(heads.grad).all() and heads.grad[: s.ways].abs().sum() > 0


def test_trainnet_calls_the_step_of_an_algorithm_that_needs_the_model() -> None:
    optional_import("learn2learn")
    torch.manual_seed(0)
    s = StepShape(n_tasks=1, ways=2, shots=1, queries=1, norm=True)
    backbone = build_model("conv4", image_size=16)
    net = TrainNet(backbone, torch.zeros(3, 64), get_algorithm("maml"), s)
    loss, _ = net(torch.randn(4, 3, 16, 16), *dummy_labels(s))
    assert loss.requires_grad and torch.isfinite(loss)


def test_anil_and_maml_raise_an_install_hint_when_learn2learn_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "learn2learn", None)  # makes `import learn2learn` fail
    for name in ("anil", "maml"):
        with pytest.raises(FsmtlError, match="make l2l"):
            get_algorithm(name)
    assert get_algorithm("metaoptnet").name == "metaoptnet"


def run_train(data: Path, out: Path, algorithm: str, *extra: str) -> int:
    return run_stage_main(train_main, [
        "--data", str(data), "--out", str(out), "--algorithm", algorithm, "--model", "conv4",
        "--meta-batch-size", "2", "--epoch-length", "4", "--max-epochs", "2", "--val-epoch-length", "4",
        "--test-queries", "5", "--wandb", "disabled", "--no-progress", "--log-every", "1", "--precision", "fp32",
        *extra,
    ])  # fmt: skip


def test_fsmtl_train_with_metaoptnet_runs_end_to_end_and_validates(tiny_shards: Path, tmp_path: Path) -> None:
    assert run_train(tiny_shards, tmp_path / "run", "metaoptnet") == 0
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [2, 4]
    assert all(0.0 <= r["val_acc"] <= 1.0 for r in rows)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["config"]["algorithm"] == "metaoptnet" and ckpt["heads"].shape[0] == 0


@pytest.mark.parametrize("algorithm", ["anil", "maml"])
def test_fsmtl_train_with_anil_or_maml_runs_end_to_end(tiny_shards: Path, tmp_path: Path, algorithm: str) -> None:
    optional_import("learn2learn")
    small = ["--train-ways", "2", "--train-shots", "1", "--train-queries", "1", "--meta-batch-size", "1",
             "--epoch-length", "2", "--max-epochs", "1"]  # MAML's per-task inner loops are slow on CPU: the smallest task
    assert run_train(tiny_shards, tmp_path / algorithm, algorithm, *small) == 0
    rows = read_metrics(tmp_path / algorithm)
    assert rows[-1]["step"] == 2 and all(r["train_loss"] == r["train_loss"] for r in rows)  # not NaN
