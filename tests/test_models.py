"""Backbones: shapes, published parameter counts, DropBlock's ramp, determinism in eval mode."""

from __future__ import annotations

import pytest
import torch

from fsmtl.core.errors import FsmtlError
from fsmtl.models import MODEL_NAMES, build_model, feature_dim, set_train_step
from fsmtl.models.dropblock import dropblock

PUBLISHED_PARAMS = {"resnet12": 12.4e6, "wrn28_10": 36.5e6, "resnet18": 11.2e6, "conv4": 113e3}
FEATURES = {"resnet12": 640, "wrn28_10": 640, "resnet18": 512}


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_count_matches_published_architecture_within_one_percent(name: str) -> None:
    assert n_params(build_model(name)) == pytest.approx(PUBLISHED_PARAMS[name], rel=0.01)


@pytest.mark.parametrize("size", [84, 32, 28])
@pytest.mark.parametrize("name", ["resnet12", "conv4", "resnet18"])
def test_forward_gives_batch_by_feature_dim_for_each_input_size(name: str, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, image_size=size)
    out = model(torch.randn(2, 3, size, size))
    expected = FEATURES.get(name, 64 * (size // 16) ** 2)
    assert out.shape == (2, expected)
    assert feature_dim(model, 3, size) == expected
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", [32, 28])
def test_wrn28_10_gives_640_features_for_small_inputs(size: int) -> None:
    model = build_model("wrn28_10", image_size=size)
    assert model(torch.randn(2, 3, size, size)).shape == (2, 640)


def test_wrn28_10_gives_640_features_at_84px() -> None:
    assert feature_dim(build_model("wrn28_10"), 3, 84) == 640


def test_conv4_takes_single_channel_omniglot_images() -> None:
    model = build_model("conv4", in_channels=1, image_size=28)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 64)
    assert n_params(model) == 113088 - 2 * 9 * 64  # two fewer input channels in the first conv


@pytest.mark.parametrize("size,pools,dim", [(32, 4, 256), (32, 3, 1024), (28, 3, 576), (28, 4, 64), (8, 3, 64), (5, 0, 1600)])
def test_conv4_pools_set_the_feature_map_it_flattens(size: int, pools: int, dim: int) -> None:
    model = build_model("conv4", in_channels=1, image_size=size, pools=pools)
    assert feature_dim(model, 1, size) == dim
    # the convolutions are the same: dropping pools adds no parameters
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in build_model("conv4", in_channels=1, image_size=32).parameters())


@pytest.mark.parametrize("pools,size,match", [(5, 32, r"pools must be an integer in \[0, 4\].*got 5"),
                                              (-1, 32, "pools must be an integer >= 0"),
                                              (3, 7, r"image_size must be an integer >= 8 \(3 2x2 poolings")])
def test_conv4_refuses_pools_it_cannot_apply(pools: int, size: int, match: str) -> None:
    with pytest.raises(FsmtlError, match=match):
        build_model("conv4", in_channels=1, image_size=size, pools=pools)


def test_resnet12_uses_dropblock_size_5_at_84px_and_2_below() -> None:
    assert build_model("resnet12", image_size=84).blocks[2].dropblock.block_size == 5
    assert build_model("resnet12", image_size=32).blocks[3].dropblock.block_size == 2
    assert build_model("resnet12").blocks[0].dropblock is None


def test_dropblock_rate_ramps_linearly_then_stays_at_drop_rate() -> None:
    model = build_model("resnet12", drop_rate=0.1, ramp_steps=100)
    db = model.blocks[3].dropblock
    rates = []
    for step in (0, 50, 100, 1000):
        set_train_step(model, step)
        rates.append(float(db.current_rate(model.step)))
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.1])


def test_dropblock_step_is_saved_in_the_state_dict() -> None:
    a = build_model("resnet12", image_size=32)
    set_train_step(a, 1234)
    b = build_model("resnet12", image_size=32)
    b.load_state_dict(a.state_dict())
    assert int(b.step) == 1234


def test_dropblock_at_step_zero_drops_nothing_in_blocks_3_and_4() -> None:
    model = build_model("resnet12", image_size=32, drop_rate=0.1)
    x = torch.randn(4, 320, 4, 4)
    out = model.blocks[3].dropblock(x, torch.tensor(0))
    assert torch.equal(out, x)


def test_dropblock_drops_about_the_requested_fraction_in_whole_squares() -> None:
    torch.manual_seed(0)
    x = torch.ones(64, 16, 20, 20)
    out = dropblock(x, torch.tensor(0.1), block_size=3)
    dropped = (out == 0).float().mean().item()
    assert 0.05 < dropped < 0.15
    kept = out[out != 0]
    assert torch.allclose(kept, kept[0].expand_as(kept))  # one rescale factor
    assert out.mean().item() == pytest.approx(1.0, rel=1e-5)  # expectation preserved


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_eval_mode_forward_is_deterministic(name: str) -> None:
    model = build_model(name, image_size=32).eval()
    set_train_step(model, 10**6)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_train_mode_resnet12_is_stochastic_after_the_ramp() -> None:
    model = build_model("resnet12", image_size=32, drop_rate=0.5, ramp_steps=1).train()
    set_train_step(model, 10)
    x = torch.randn(4, 3, 32, 32)
    assert not torch.equal(model(x), model(x))


def test_build_model_rejects_unknown_names_and_options() -> None:
    with pytest.raises(FsmtlError, match="resnet99"):
        build_model("resnet99")
    with pytest.raises(FsmtlError, match="drop_rate"):
        build_model("conv4", drop_rate=0.1)


def test_channels_last_bf16_forward_matches_fp32_roughly() -> None:
    torch.manual_seed(0)
    model = build_model("resnet12", image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        m2 = model.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m2(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out.float(), ref, rtol=0.1, atol=0.1)


@pytest.mark.parametrize(
    "name,size,least", [("conv4", 0, 16), ("conv4", 8, 16), ("resnet12", -1, 16), ("resnet12", 8, 16),
                        ("resnet12", 15, 16), ("resnet18", 0, 1), ("resnet12", 32.0, 16)],
)
def test_build_model_rejects_an_image_size_the_model_cannot_take(name: str, size, least: int) -> None:
    with pytest.raises(FsmtlError, match=rf"model {name}: image_size must be an integer >= {least}.*got {size!r}$"):
        build_model(name, image_size=size)


@pytest.mark.parametrize("name,size", [("conv4", 16), ("resnet12", 16), ("resnet18", 4)])
def test_the_smallest_accepted_image_size_gives_a_valid_forward(name: str, size: int) -> None:
    assert feature_dim(build_model(name, image_size=size), 3, size) > 0


@pytest.mark.parametrize("name", ["resnet12", "wrn28_10"])
@pytest.mark.parametrize("rate", [2.0, 1.0, -1, float("nan"), True, "0.1"])
def test_models_require_a_drop_rate_in_zero_to_one(name: str, rate) -> None:
    with pytest.raises(FsmtlError, match=rf"model {name}: drop_rate must be a number in \[0, 1\), got"):
        build_model(name, image_size=32, drop_rate=rate)


def test_resnet12_rejects_a_drop_rate_of_one_when_built_directly() -> None:
    from fsmtl.models.resnet12 import ResNet12

    with pytest.raises(FsmtlError, match="drop_rate"):
        ResNet12(image_size=32, drop_rate=1.0)


@pytest.mark.parametrize("channels", ["3", 3.0, True, 2])
def test_build_model_shows_the_repr_of_bad_in_channels(channels) -> None:
    with pytest.raises(FsmtlError, match=rf"model conv4: in_channels must be the int 1 or 3, got {channels!r}$"):
        build_model("conv4", in_channels=channels, image_size=32)


def test_build_model_accepts_numpy_integer_sizes_and_channels() -> None:
    np = pytest.importorskip("numpy")
    model = build_model("conv4", in_channels=np.int64(1), image_size=np.int64(28))
    assert feature_dim(model, 1, 28) == 64


DOCUMENTED_REBUILD = 'build_model(ckpt["model_name"], in_channels=c, image_size=h, **ckpt["model_kwargs"])'


@pytest.mark.parametrize("name,options", [("resnet12", {}), ("resnet18", {}), ("conv4", {"width": 8, "pools": 3})])
def test_the_documented_call_rebuilds_a_trained_checkpoints_backbone_exactly(name: str, options: dict, tiny_shards,
                                                                            tmp_path) -> None:
    from pathlib import Path

    from fsmtl.train.config import TrainConfig
    from fsmtl.train.run import train

    doc = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    assert DOCUMENTED_REBUILD in doc and 'h, w, c = ckpt["data_meta"]["image_shape"]' in doc
    out = tmp_path / name
    cfg = TrainConfig(data=str(tiny_shards), out=str(out), model=name, meta_batch_size=2, epoch_length=2,
                      val_epoch_length=2, train_shots=1, train_queries=1, test_queries=2, max_epochs=1,
                      wandb="disabled", progress=False, log_every=1, precision="fp32", **options)  # fmt: skip
    train(cfg)
    ckpt = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert {k: ckpt["model_kwargs"][k] for k in options} == options
    h, w, c = ckpt["data_meta"]["image_shape"]
    assert (h, w, c) == (32, 32, 3)
    model = build_model(ckpt["model_name"], in_channels=c, image_size=h, **ckpt["model_kwargs"])
    model.load_state_dict(ckpt["model"], strict=True)
    rebuilt = model.state_dict()
    assert rebuilt.keys() == ckpt["model"].keys()
    assert all(torch.equal(rebuilt[k], ckpt["model"][k]) for k in rebuilt)
