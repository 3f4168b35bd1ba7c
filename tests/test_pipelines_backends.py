"""The four back ends on the same shards: same structure; dali/ffcv equal torch for a seed."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import optional_import
from fsmtl.core.errors import FsmtlError
from fsmtl.pipelines.backend_reference import ReferenceBackend, learn2learn_available
from fsmtl.pipelines.formats import split_dir
from fsmtl.pipelines.config import PipelineConfig
from fsmtl.pipelines.loader import TaskLoader, build_task_loader
from fsmtl.pipelines.types import TaskBatch
from fsmtl.preprocess.shard_reader import open_shards
from fsmtl.preprocess.shards import SplitData
from test_pipelines import check_structure

CFG = PipelineConfig(ways=3, shots=2, queries=2, tasks_per_batch=2)


def _open(root: Path) -> tuple[SplitData, tuple[float, ...], tuple[float, ...]]:
    s = open_shards(root)
    return s.split("train"), s.mean, s.std


def _take(split: SplitData, mean, std, cfg: PipelineConfig, n: int = 2) -> list[TaskBatch]:
    with build_task_loader(split, mean, std, cfg) as loader:
        return [next(loader) for _ in range(n)]


def _same(a: list[TaskBatch], b: list[TaskBatch], atol: float = 1e-4) -> None:
    for x, y in zip(a, b):
        assert torch.equal(x.task, y.task) and torch.equal(x.label, y.label)
        assert torch.equal(x.global_class, y.global_class)
        assert (x.images - y.images).abs().max().item() <= atol


@pytest.fixture(scope="module")
def exported(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny shards with the FFCV and DALI exports beside each split."""
    out = tmp_path_factory.mktemp("exported") / "tiny32"
    shutil.copytree(tiny_shards, out)
    split = open_shards(out).split("train")
    if optional_import_quiet("ffcv"):
        from fsmtl.preprocess.export_ffcv import export_split_ffcv

        export_split_ffcv(split, out / "train" / "data.beton")
    from fsmtl.preprocess.export_dali import export_split_dali

    export_split_dali(split, out / "train" / "dali")
    return out


def optional_import_quiet(name: str) -> bool:
    try:
        __import__(name)
    except Exception:  # noqa: BLE001
        return False
    return True


def test_dali_back_end_equals_torch_for_the_same_seed(exported: Path) -> None:
    optional_import("nvidia.dali")
    split, mean, std = _open(exported)
    dali = _take(split, mean, std, replace(CFG, backend="dali"))
    check_structure(dali[0], split, CFG, mean, std)
    _same(dali, _take(split, mean, std, CFG))


def test_dali_with_workers_0_runs_on_one_thread(exported: Path) -> None:
    optional_import("nvidia.dali")
    split, mean, std = _open(exported)
    _same(_take(split, mean, std, replace(CFG, backend="dali", workers=0), 1), _take(split, mean, std, CFG, 1))


def test_ffcv_back_end_equals_torch_for_the_same_seed(exported: Path) -> None:
    optional_import("ffcv")
    split, mean, std = _open(exported)
    assert (split_dir(split) / "data.beton").is_file()
    ffcv = _take(split, mean, std, replace(CFG, backend="ffcv", workers=1), 3)
    check_structure(ffcv[0], split, CFG, mean, std)
    _same(ffcv, _take(split, mean, std, CFG, 3))


@pytest.mark.parametrize("backend", ["dali", "ffcv"])
def test_exporting_back_ends_resume_exactly(exported: Path, backend: str) -> None:
    optional_import({"dali": "nvidia.dali", "ffcv": "ffcv"}[backend])
    split, mean, std = _open(exported)
    cfg = replace(CFG, backend=backend, workers=1)
    with build_task_loader(split, mean, std, cfg) as loader:
        next(loader)
        state = loader.state_dict()
        expected = next(loader)
        loader.load_state_dict(state)
        _same([expected], [next(loader)], atol=0.0)


def test_dali_exports_on_the_fly_when_the_shards_lack_it(tiny_shards_84: Path, caplog: pytest.LogCaptureFixture) -> None:
    optional_import("nvidia.dali")
    split, mean, std = _open(tiny_shards_84)
    cfg = replace(CFG, backend="dali", augment="lee", jitter=False)
    with caplog.at_level("WARNING"):
        dali = _take(split, mean, std, cfg, 1)
    assert "exporting split" in caplog.text
    _same(dali, _take(split, mean, std, replace(cfg, backend="torch"), 1))


def test_a_stale_export_is_rejected_with_fsmtl_error(exported: Path, tmp_path: Path) -> None:
    optional_import("nvidia.dali")
    root = tmp_path / "stale"
    shutil.copytree(exported, root)
    np.save(root / "train" / "dali" / "images.npy", np.zeros((3, 32, 32, 3), np.uint8))
    split, mean, std = _open(root)
    with pytest.raises(FsmtlError, match="re-run fsmtl convert"):
        build_task_loader(split, mean, std, replace(CFG, backend="dali"))


@pytest.mark.parametrize("workers", [0, 2])
def test_reference_back_end_gives_the_same_structure(tiny_shards: Path, workers: int) -> None:
    split, mean, std = _open(tiny_shards)
    cfg = replace(CFG, backend="reference", workers=workers)
    for b in _take(split, mean, std, cfg):
        check_structure(b, split, cfg, mean, std)


def test_reference_back_end_follows_our_sampler_without_learn2learn(tiny_shards: Path) -> None:
    split, mean, std = _open(tiny_shards)
    cfg = replace(CFG, backend="reference", workers=0, augment="none")
    ref = TaskLoader(ReferenceBackend(split, list(mean), list(std), cfg, 4, use_learn2learn=False), cfg)
    with ref:
        got = [next(ref) for _ in range(2)]
    # no augmentation: the seed's ToTensor + Normalize equals our normalisation on the same rows
    _same(got, _take(split, mean, std, replace(cfg, backend="torch")), atol=1e-5)


def test_reference_back_end_builds_tasks_with_learn2learn_where_installed(tiny_shards: Path) -> None:
    optional_import("learn2learn")
    assert learn2learn_available()
    split, mean, std = _open(tiny_shards)
    cfg = replace(CFG, backend="reference", workers=0)
    backend = ReferenceBackend(split, list(mean), list(std), cfg, 4)
    assert backend.use_learn2learn
    with TaskLoader(backend, cfg) as loader:
        b = next(loader)
    check_structure(b, split, cfg, mean, std)


def test_an_ffcv_export_of_another_image_shape_is_rejected(exported: Path, tmp_path: Path) -> None:
    from types import SimpleNamespace

    optional_import("ffcv")
    from fsmtl.preprocess.export_ffcv import export_split_ffcv

    root = tmp_path / "stale"
    shutil.copytree(exported, root)
    split, mean, std = _open(root)
    n = len(split.images)
    fake = SimpleNamespace(images=np.zeros((n, 16, 16, 3), np.uint8), labels=np.zeros(n, np.int64))
    (root / "train" / "data.beton").unlink()
    export_split_ffcv(fake, root / "train" / "data.beton", progress=False)  # same count, wrong shape
    with pytest.raises(FsmtlError, match=r"expected uint8 images \(32, 32, 3\)"):
        build_task_loader(split, mean, std, replace(CFG, backend="ffcv"))
