"""The task loader contract (torch back end): batch structure, determinism, resume, errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fsmtl.core.errors import FsmtlError
from fsmtl.pipelines import config as pipeline_config
from fsmtl.pipelines.backend_torch import TorchBackend
from fsmtl.pipelines.config import PipelineConfig
from fsmtl.pipelines.loader import TaskLoader, build_task_loader, concat_splits
from fsmtl.pipelines.planning import plan_batch
from fsmtl.pipelines.types import TaskBatch
from fsmtl.preprocess.shard_reader import open_shards
from fsmtl.preprocess.shards import SplitData

CFG = PipelineConfig(ways=4, shots=2, queries=3, tasks_per_batch=3)


def _open(root: Path, split: str = "train") -> tuple[SplitData, tuple[float, ...], tuple[float, ...]]:
    s = open_shards(root)
    return s.split(split), s.mean, s.std


def _take(split: SplitData, mean, std, cfg: PipelineConfig, n: int) -> list[TaskBatch]:
    with build_task_loader(split, mean, std, cfg) as loader:
        return [next(loader) for _ in range(n)]


def check_structure(b: TaskBatch, split: SplitData, cfg: PipelineConfig, mean, std) -> None:
    """What every back end must produce (also used by the back-end tests)."""
    t, n, k = cfg.tasks_per_batch, cfg.ways, cfg.per_class
    size, c = split.images.shape[1], split.images.shape[3]
    assert b.images.shape == (t * n * k, c, size, size) and b.images.dtype == cfg.out_dtype
    assert b.images.is_contiguous(memory_format=torch.channels_last) == cfg.channels_last or c == 1
    assert torch.equal(b.task, torch.arange(t).repeat_interleave(n * k))
    assert torch.equal(b.label, torch.arange(n).repeat_interleave(k).repeat(t))
    for d in (b.task, b.label, b.global_class):
        assert d.dtype == torch.int64
    per_way = b.global_class.view(t, n, k)
    assert (per_way == per_way[:, :, :1]).all()  # one class per way
    for row in per_way[:, :, 0]:
        assert len(set(row.tolist())) == n  # distinct classes within a task
    assert 0 <= int(b.global_class.min()) and int(b.global_class.max()) < split.n_classes
    lo = (0.0 - torch.tensor(mean)) / torch.tensor(std)
    hi = (1.0 - torch.tensor(mean)) / torch.tensor(std)
    x = b.images.float()
    tol = 1e-3 if cfg.out_dtype == torch.float32 else 3e-2  # bf16 keeps 8 bits of mantissa
    assert (x.amin(dim=(0, 2, 3)) >= lo - tol).all() and (x.amax(dim=(0, 2, 3)) <= hi + tol).all()


def test_batches_have_the_contract_structure(tiny_shards: Path) -> None:
    split, mean, std = _open(tiny_shards)
    for b in _take(split, mean, std, CFG, 2):
        check_structure(b, split, CFG, mean, std)


def test_same_seed_gives_the_same_batches_and_another_seed_differs(tiny_shards: Path) -> None:
    split, mean, std = _open(tiny_shards)
    a = _take(split, mean, std, CFG, 3)
    b = _take(split, mean, std, replace(CFG, prefetch=False), 3)
    c = _take(split, mean, std, replace(CFG, seed=1), 1)
    for x, y in zip(a, b):
        assert all(torch.equal(u, v) for u, v in zip(x, y))
    assert not torch.equal(a[0].global_class, c[0].global_class) or not torch.equal(a[0].images, c[0].images)


def test_load_state_dict_resumes_exactly_after_the_saved_batch(tiny_shards: Path) -> None:
    split, mean, std = _open(tiny_shards)
    with build_task_loader(split, mean, std, CFG) as loader:
        next(loader)
        state = loader.state_dict()
        expected = [next(loader) for _ in range(2)]
    with build_task_loader(split, mean, std, replace(CFG, prefetch=False)) as other:
        for _ in range(3):  # somewhere else in the same stream
            next(other)
        other.load_state_dict(state)
        got = [next(other) for _ in range(2)]
    for x, y in zip(expected, got):
        assert all(torch.equal(u, v) for u, v in zip(x, y))


def test_labels_within_each_task_map_to_its_global_classes(tiny_shards: Path) -> None:
    split, mean, std = _open(tiny_shards)
    gen = torch.Generator().manual_seed(0)
    plan = plan_batch(torch.from_numpy(split.class_offsets), CFG, 4, gen)
    assert torch.equal(torch.from_numpy(split.labels)[plan.rows], plan.global_class)


def test_numba_and_torch_cpu_paths_give_the_same_batch(tiny_shards_84: Path) -> None:
    split, mean, std = _open(tiny_shards_84)
    plan = plan_batch(torch.from_numpy(split.class_offsets), CFG, 8, torch.Generator().manual_seed(0))
    fast = TorchBackend(split, list(mean), list(std), CFG, 8).make_cpu(plan)
    slow = TorchBackend(split, list(mean), list(std), CFG, 8, cpu_kernel="torch").make_cpu(plan)
    assert (fast.images - slow.images).abs().max().item() < 1e-4


def test_split_over_the_memory_budget_gives_the_same_batches(tiny_shards: Path) -> None:
    split, mean, std = _open(tiny_shards)
    a = _take(split, mean, std, CFG, 2)
    b = _take(split, mean, std, replace(CFG, memory_budget_gb=1e-6), 2)
    for x, y in zip(a, b):
        assert torch.equal(x.images, y.images)


def test_augment_none_only_normalises(tiny_shards: Path) -> None:
    split, mean, std = _open(tiny_shards)
    cfg = replace(CFG, augment="none", out_dtype=torch.bfloat16, channels_last=False)
    (b,) = _take(split, mean, std, cfg, 1)
    check_structure(b, split, cfg, mean, std)
    plan = plan_batch(torch.from_numpy(split.class_offsets), cfg, 4, torch.Generator().manual_seed(0))
    raw = torch.from_numpy(np.asarray(split.images)[plan.rows.numpy()]).permute(0, 3, 1, 2).float() / 255
    expect = (raw - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    assert torch.allclose(b.images.float(), expect, atol=0.05)


def test_concat_splits_offsets_the_labels_of_later_splits(tiny_shards: Path) -> None:
    s = open_shards(tiny_shards)
    train, val = s.split("train"), s.split("val")
    both = concat_splits([train, val])
    assert both.n_classes == train.n_classes + val.n_classes
    assert len(both.images) == len(train.images) + len(val.images)
    assert np.array_equal(both.labels[len(train.labels):], val.labels + train.n_classes)
    assert both.class_offsets[-1] == len(both.images) and np.all(np.diff(both.class_offsets) > 0)
    assert np.array_equal(both.images[both.class_rows(train.n_classes)], val.images[val.class_rows(0)])
    (b,) = _take(both, s.mean, s.std, replace(CFG, ways=10), 1)
    check_structure(b, both, replace(CFG, ways=10), s.mean, s.std)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"ways": 9}, "8 classes"),
        ({"shots": 20, "queries": 11}, "smallest class"),
        ({"backend": "nope"}, "backend"),
        ({"augment": "heavy"}, "augment"),
        ({"padding": 40}, "padding"),
        ({"device": "cuda:0"}, "CUDA"),
        ({"device_kernel": "cuda"}, "device_kernel"),
        ({"group_images": 0}, "group_images"),
    ],
)
def test_bad_requests_raise_fsmtl_error_before_any_work(tiny_shards: Path, change: dict, message: str) -> None:
    split, mean, std = _open(tiny_shards)
    if change.get("device") and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(FsmtlError, match=message):
        build_task_loader(split, mean, std, replace(CFG, **change))


def test_a_back_end_that_is_not_installed_raises_fsmtl_error(tiny_shards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    split, mean, std = _open(tiny_shards)
    monkeypatch.setitem(pipeline_config._BACKEND_MODULES, "dali", "fsmtl_no_such_module_for_tests")
    with pytest.raises(FsmtlError, match="not installed"):
        build_task_loader(split, mean, std, replace(CFG, backend="dali"))


def test_shards_failing_their_checks_raise_fsmtl_error(tiny_shards: Path) -> None:
    split, mean, std = _open(tiny_shards)
    broken = SplitData("train", split.images, split.labels, split.class_offsets[:-1], split.classes)
    with pytest.raises(FsmtlError, match="class_offsets"):
        build_task_loader(broken, mean, std, CFG)
    floats = SplitData("train", np.zeros((4, 8, 8, 3), np.float32), split.labels[:4], np.array([0, 4]), ["a"])
    with pytest.raises(FsmtlError, match="uint8"):
        build_task_loader(floats, mean, std, CFG)
    with pytest.raises(FsmtlError, match="mean/std"):
        build_task_loader(split, mean[:1], std, CFG)


def test_closed_loader_refuses_to_continue(tiny_shards: Path) -> None:
    split, mean, std = _open(tiny_shards)
    loader = build_task_loader(split, mean, std, CFG)
    assert isinstance(loader, TaskLoader)
    next(loader)
    loader.close()
    with pytest.raises(RuntimeError):
        next(loader)


def test_a_held_batch_is_never_overwritten_by_later_batches(tiny_shards_84: Path) -> None:
    split, mean, std = _open(tiny_shards_84)
    with build_task_loader(split, mean, std, CFG) as loader:
        first = next(loader)
        saved = first.images.clone()
        for _ in range(6):
            next(loader)
        assert torch.equal(first.images, saved)


def test_buffer_pool_reuses_a_buffer_only_after_it_is_released() -> None:
    from fsmtl.pipelines.backend_torch import BufferPool

    pool = BufferPool(size=2)
    a = pool.get((2, 3))
    view = a.permute(1, 0)[1:]
    del a
    b = pool.get((2, 3))
    ptr = view.untyped_storage().data_ptr()
    assert b.untyped_storage().data_ptr() != ptr  # the view still holds the first buffer
    del view
    c = pool.get((2, 3))
    assert c.untyped_storage().data_ptr() == ptr


@pytest.mark.parametrize("budget", [None, 1e-6])
def test_the_device_code_path_equals_the_cpu_kernel(tiny_shards_84: Path, budget: float | None) -> None:
    # cpu_kernel="device" runs the CUDA path (resident split, or host staging past the budget)
    split, mean, std = _open(tiny_shards_84)
    cfg = replace(CFG, memory_budget_gb=budget)
    plan = plan_batch(torch.from_numpy(split.class_offsets), cfg, 8, torch.Generator().manual_seed(3))
    device = TorchBackend(split, list(mean), list(std), cfg, 8, cpu_kernel="device")
    assert device.resident == (budget is None)
    got = device.make_device(plan)
    want = TorchBackend(split, list(mean), list(std), cfg, 8).make_cpu(plan)
    assert (got.images - want.images).abs().max().item() < 1e-4
    assert torch.equal(got.global_class, want.global_class)


def test_a_loader_handing_over_whole_groups_gives_the_same_batches_and_resumes_mid_group(tiny_shards_84: Path) -> None:
    # the device path's CPU twin makes batches in groups, and the prefetch thread hands over a
    # group at a time (TorchBackend.chunk): batches and per-batch states as without the thread
    split, mean, std = _open(tiny_shards_84)
    cfg = replace(CFG, group_images=3 * CFG.batch_images)  # 3 batches a group
    pad = pipeline_config.check_request(split, mean, std, cfg)

    def make(prefetch: bool) -> TaskLoader:
        c = replace(cfg, prefetch=prefetch)
        return TaskLoader(TorchBackend(split, list(mean), list(std), c, pad, cpu_kernel="device"), c)

    with make(True) as grouped, make(False) as plain:
        assert grouped.backend.chunk == 3
        got, states, want, want_states = [], [], [], []
        for _ in range(5):
            got.append(next(grouped))
            states.append(grouped.state_dict()["generator"])
            want.append(next(plain))
            want_states.append(plain.state_dict()["generator"])
        for x, y in zip(got, want):
            assert all(torch.equal(u, v) for u, v in zip(x, y))
        assert all(torch.equal(a, b) for a, b in zip(states, want_states))
        assert not torch.equal(states[0], states[1])  # a state per batch, not per group
        grouped.load_state_dict({**grouped.state_dict(), "batches": 2, "generator": states[1]})  # mid-group
        again = [next(grouped) for _ in range(3)]
    for x, y in zip(again, want[2:5]):
        assert all(torch.equal(u, v) for u, v in zip(x, y))
