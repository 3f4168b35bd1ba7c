"""The fused Triton Lee19 kernel (the CUDA path), run here by Triton's CPU interpreter.

conftest.py sets TRITON_INTERPRET=1 before the kernel is defined; on a GPU the same checks run
in benchmarks/gpu_check.sh (its check-augment and pipeline steps).
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fsmtl.core.errors import FsmtlError
from fsmtl.pipelines.augment import augment_rows, color_jitter, draw_lee_params, jitter_slots
from fsmtl.pipelines.backend_torch import TorchBackend, choose_device_kernel
from fsmtl.pipelines.config import PipelineConfig
from fsmtl.pipelines.loader import TaskLoader
from fsmtl.preprocess.shard_reader import open_shards

triton_aug = pytest.importorskip("fsmtl.pipelines.triton_aug", reason="triton is not installed")

CFG = PipelineConfig(ways=4, shots=2, queries=3, tasks_per_batch=3)


def _extreme_params(n_per_order: int, gen: torch.Generator, pad: int, jitter: bool = True):
    orders = torch.tensor(list(itertools.permutations(range(3))))  # all six orders ...
    n = n_per_order * len(orders)
    params = draw_lee_params(n, gen, pad, jitter=jitter)
    params = params._replace(flip=torch.arange(n) % 2 == 0)
    if not jitter:
        return params
    factors = params.factors.clone()  # type: ignore[union-attr]
    factors[: n // 2] = torch.tensor([0.6, 1.4, 1.4])  # ... with clamping-heavy extremes
    return params._replace(order=orders.repeat(n_per_order, 1), factors=factors)


@pytest.mark.parametrize("channels,size,pad,jitter", [(3, 84, 8, True), (3, 20, 4, True), (1, 28, 4, True), (3, 32, 4, False)])
def test_triton_kernel_equals_the_torch_ops_for_every_order_flip_and_extreme_factors(
    channels: int, size: int, pad: int, jitter: bool
) -> None:
    gen = torch.Generator().manual_seed(7)
    data = torch.randint(0, 256, (12, size, size, channels), dtype=torch.uint8, generator=gen)
    params = _extreme_params(4, gen, pad, jitter)
    rows = torch.randint(0, 12, (params.top.numel(),), generator=gen)
    mean, std = [0.45] * channels, [0.27] * channels
    got = triton_aug.augment_rows_triton(data, rows, params, mean, std)
    want = augment_rows(data, rows, params, mean, std)
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    assert (got - want).abs().max().item() < 1e-5


def test_triton_kernel_writes_the_requested_dtype_and_layout() -> None:
    gen = torch.Generator().manual_seed(1)
    data = torch.randint(0, 256, (6, 16, 16, 3), dtype=torch.uint8, generator=gen)
    params = draw_lee_params(6, gen, 4)
    rows = torch.arange(6)
    want = augment_rows(data, rows, params, [0.5] * 3, [0.25] * 3)
    got = triton_aug.augment_rows_triton(data, rows, params, [0.5] * 3, [0.25] * 3, torch.bfloat16, channels_last=False)
    assert got.dtype == torch.bfloat16 and got.is_contiguous()
    # one rounding of the same float32 values: within one bfloat16 step (2^-7 relative; the
    # interpreter truncates where compiled code rounds to nearest)
    assert ((got.float() - want).abs() <= want.abs() * 2**-7 + 1e-6).all()


def test_jitter_slots_place_each_op_where_the_order_puts_it() -> None:
    gen = torch.Generator().manual_seed(3)
    params = _extreme_params(1, gen, 4)
    coef, slot = jitter_slots(params, 3)
    for i in range(params.order.shape[0]):  # type: ignore[union-attr]
        for k, op in enumerate(params.order[i].tolist()):  # type: ignore[union-attr]
            f = float(params.factors[i, op])  # type: ignore[index]
            assert coef[i, k, 0].item() == pytest.approx(f)
            assert coef[i, k, 1].item() == pytest.approx(1 - f if op == 2 else 0.0)
            assert (slot[i].item() == k) == (op == 1)
    coef1, _ = jitter_slots(params, 1)  # saturation of one channel is the identity
    sat = params.order == 2  # type: ignore[operator]
    assert (coef1[..., 0][sat] == 1).all() and (coef1[..., 1] == 0).all()
    none, slot_none = jitter_slots(params._replace(factors=None, order=None), 3)
    assert (none[..., 0] == 1).all() and (none[..., 1] == 0).all() and (slot_none == 3).all()


def test_jitter_slots_reproduce_color_jitter_in_plain_torch() -> None:
    gen = torch.Generator().manual_seed(4)
    params = _extreme_params(2, gen, 4)
    x = torch.rand(params.top.numel(), 9, 9, 3, generator=gen)
    coef, slot = jitter_slots(params, 3)
    y = x.clone()
    w = torch.tensor([0.2989, 0.587, 0.114])
    for k in range(3):
        gray = (y * w).sum(3, keepdim=True)
        f, a = coef[:, k, 0].view(-1, 1, 1, 1), coef[:, k, 1].view(-1, 1, 1, 1)
        t = torch.where((slot == k).view(-1, 1, 1, 1), (1 - f) * gray.mean((1, 2, 3), keepdim=True), 0.0)
        y = (f * y + a * gray + t).clamp(0, 1)
    assert (y - color_jitter(x, params.factors, params.order)).abs().max().item() < 1e-6  # type: ignore[arg-type]


@pytest.mark.parametrize("budget", [None, 1e-6])
def test_the_device_path_with_the_triton_kernel_gives_the_cpu_kernels_batches(tiny_shards: Path, budget: float | None) -> None:
    s = open_shards(tiny_shards)
    split = s.split("train")
    cfg = replace(CFG, memory_budget_gb=budget, device_kernel="triton", group_images=2 * CFG.batch_images, prefetch=False)
    # (no prefetch thread: Triton's interpreter patches triton.language globally, so two threads
    # interpreting kernels at once can break each other; compiled kernels have no such limit)
    device = TorchBackend(split, list(s.mean), list(s.std), cfg, 4, cpu_kernel="device")
    assert device.kernel == "triton" and device.group == 2
    with TaskLoader(device, cfg) as a, TaskLoader(TorchBackend(split, list(s.mean), list(s.std), cfg, 4), cfg) as b:
        for _ in range(device.group + 1):  # across a group boundary
            got, want = next(a), next(b)
            assert (got.images - want.images).abs().max().item() < 1e-4
            for x, y in zip(got[1:], want[1:]):
                assert torch.equal(x, y)


def test_grouped_device_batches_equal_single_ones_and_resume_inside_a_group(tiny_shards: Path) -> None:
    s = open_shards(tiny_shards)
    split = s.split("train")

    def loader(group_images: int) -> TaskLoader:
        cfg = replace(CFG, group_images=group_images)
        return TaskLoader(TorchBackend(split, list(s.mean), list(s.std), cfg, 4, cpu_kernel="device"), cfg)

    with loader(1) as one, loader(5 * CFG.batch_images) as grouped:
        assert one.backend.group == 1 and grouped.backend.group == 5
        for _ in range(2):
            assert torch.equal(next(one).images, next(grouped).images)
        state = grouped.state_dict()  # saved in the middle of a group of five
        rest = [next(one).images for _ in range(6)]
    with loader(5 * CFG.batch_images) as resumed:
        resumed.load_state_dict(state)
        for want in rest:
            assert torch.equal(next(resumed).images, want)


def test_auto_takes_triton_on_cuda_and_torch_ops_on_the_cpu_twin() -> None:
    assert choose_device_kernel("auto", True, lambda: None) == "triton"
    assert choose_device_kernel("auto", False, lambda: None) == "torch ops"
    assert choose_device_kernel("torch", True, lambda: None) == "torch ops"
    assert choose_device_kernel("triton", False, lambda: None) == "triton"


def test_an_unusable_triton_kernel_falls_back_under_auto_and_is_an_error_when_asked_for(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        assert choose_device_kernel("auto", True, lambda: "differs by 0.5") == "torch ops"
    assert "differs by 0.5" in caplog.text
    with pytest.raises(FsmtlError, match="differs by 0.5"):
        choose_device_kernel("triton", True, lambda: "differs by 0.5")


def test_the_self_check_catches_a_kernel_that_disagrees(tiny_shards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = open_shards(tiny_shards)
    backend = TorchBackend(s.split("train"), list(s.mean), list(s.std), CFG, 4, cpu_kernel="device")
    assert backend._triton_self_check() is None
    real = triton_aug.augment_rows_triton
    monkeypatch.setattr(triton_aug, "augment_rows_triton", lambda *a, **k: real(*a, **k) + 0.01)
    assert "differs" in str(backend._triton_self_check())


_AOT = """
import sys
try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile
except ImportError as e:
    print(f"no ahead-of-time API here: {e}")
    sys.exit(77)
from fsmtl.pipelines.triton_aug import _lee_kernel

sig = {"data": "*u8", "ints": "*i64", "coef": "*fp32", "out": "*bf16", "B": "i32", "H": "i32", "W": "i32",
       "PAD": "i32", "m0": "fp32", "m1": "fp32", "m2": "fp32", "s0": "fp32", "s1": "fp32", "s2": "fp32",
       "C": "constexpr", "BLOCK": "constexpr", "JITTER": "constexpr"}
for arch, out, c, jitter in ((90, "*bf16", 3, True), (90, "*fp32", 3, False), (80, "*fp16", 1, True)):
    src = ASTSource(fn=_lee_kernel, signature=dict(sig, out=out), constexprs={"C": c, "BLOCK": 1024, "JITTER": jitter})
    kernel = compile(src, target=GPUTarget("cuda", arch, 32))
    assert kernel.asm["cubin"], "no machine code"
    if out == "*bf16":
        assert "cvt.rn.bf16.f32" in kernel.asm["ptx"], "bf16 stores must round to nearest"
print("compiled")
"""


def test_the_triton_kernel_compiles_for_hopper_and_ampere_without_a_gpu() -> None:
    # The interpreter checks arithmetic and indexing; this compiles the real kernel to sm_90/sm_80
    # machine code with Triton's own ptxas, which catches what only compilation finds.
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-c", _AOT], env=env, capture_output=True, text=True, timeout=300)
    if r.returncode == 77:
        pytest.skip(r.stdout.strip())
    assert r.returncode == 0 and "compiled" in r.stdout, r.stdout + r.stderr[-3000:]
