"""Bad arguments to the pipelines stage's public API: one-line errors naming the argument, before
any work (no segfaults in compiled kernels, no silently wrong images, no half-changed loaders)."""

from __future__ import annotations

import gc
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fsmtl.core.errors import FsmtlError
from fsmtl.pipelines.augment import LeeParams, apply_lee, augment_rows, draw_lee_params
from fsmtl.pipelines.backend_torch import TorchBackend
from fsmtl.pipelines.checks import PipelineInputError
from fsmtl.pipelines.formats import ExportCache
from fsmtl.pipelines.config import PipelineConfig
from fsmtl.pipelines.loader import TaskLoader, build_task_loader
from fsmtl.pipelines.types import TaskBatch
from fsmtl.pipelines.numba_aug import augment_rows_numba
from fsmtl.preprocess.shard_reader import open_shards
from fsmtl.preprocess.shards import SplitData

CFG = PipelineConfig(ways=4, shots=2, queries=3, tasks_per_batch=3, prefetch=False)
MEAN, STD = [0.45, 0.44, 0.4], [0.27, 0.26, 0.28]


def _batch_args(n: int = 12, b: int = 4, size: int = 16, pad: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)
    return {
        "data": data,
        "rows": torch.randint(0, n, (b,), generator=g),
        "params": draw_lee_params(b, g, pad),
        "mean": MEAN,
        "std": STD,
    }


def _numba(a: dict) -> torch.Tensor:
    data = a["data"].numpy() if isinstance(a["data"], torch.Tensor) else a["data"]
    return augment_rows_numba(data, a["rows"], a["params"], a["mean"], a["std"], out=a.get("out"))


# --- augmentation entry points ---------------------------------------------------------------

NUMBA_BAD = {
    "row_out_of_range": ({"rows": torch.tensor([0, 1, 2, 100000])}, r"rows: expected values in \[0, 12\)"),
    "negative_row": ({"rows": torch.tensor([0, -1, 2, 3])}, "rows: expected values"),
    "int32_rows": ({"rows": torch.tensor([0, 1, 2, 3], dtype=torch.int32)}, "rows: expected torch.int64"),
    "2d_rows": ({"rows": torch.zeros(2, 2, dtype=torch.int64)}, "rows: expected a 1-D"),
    "numpy_rows": ({"rows": np.arange(4)}, "rows: expected a 1-D torch int64 tensor.*numpy array"),
    "params_for_fewer_images": ({"params": draw_lee_params(2, torch.Generator(), 4)}, r"params.top: expected torch.int64 \[4\]"),
    "pad_larger_than_the_image": ({"params": draw_lee_params(4, torch.Generator(), 40)}, r"pad \(image 16x16\): expected an integer in \[0, 15\]"),
    "offsets_past_2_pad": ({"params": draw_lee_params(4, torch.Generator(), 4)._replace(pad=1)}, r"params.top: expected values in \[0, 2\]"),
    "not_a_permutation": ({"params": draw_lee_params(4, torch.Generator(), 4)._replace(order=torch.full((4, 3), 7))}, "order: expected a permutation"),
    "float_data": ({"data": torch.rand(12, 16, 16, 3)}, "data: expected uint8"),
    "nchw_data": ({"data": torch.zeros(12, 3, 16, 16, dtype=torch.uint8)}, "NCHW"),
    "one_value_mean": ({"mean": [0.5]}, "mean/std: expected 3 finite values"),
    "zero_std": ({"std": [0.2, 0.0, 0.2]}, "std > 0"),
    "nan_std": ({"std": [0.2, float("nan"), 0.2]}, "finite"),
    "wrong_out_buffer": ({"out": torch.empty(4, 3, 16, 16)}, "out: expected a C-contiguous float32 CPU tensor"),
}


@pytest.mark.parametrize("case", sorted(NUMBA_BAD))
def test_augment_rows_numba_names_the_bad_argument_instead_of_crashing(case: str) -> None:
    change, message = NUMBA_BAD[case]
    a = {**_batch_args(), **change}
    with pytest.raises(PipelineInputError, match=message) as e:
        _numba(a)
    assert "augment_rows_numba" in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, FsmtlError) and isinstance(e.value, ValueError)


def test_augment_rows_numba_asks_for_a_numpy_array_when_given_a_tensor() -> None:
    a = _batch_args()
    with pytest.raises(PipelineInputError, match=r"data: expected a uint8 numpy array.*torch tensor.*use \.numpy\(\)"):
        augment_rows_numba(a["data"], a["rows"], a["params"], MEAN, STD)  # type: ignore[arg-type]


def test_checked_inputs_still_give_the_kernels_result() -> None:
    a = _batch_args()
    assert (_numba(a) - augment_rows(a["data"], a["rows"], a["params"], MEAN, STD)).abs().max().item() < 1e-4


APPLY_LEE_BAD = {
    "float_images": (lambda x: x.float() / 255, "images: expected uint8"),
    "numpy_images": (lambda x: x.numpy(), r"images: expected a uint8 torch tensor.*numpy array.*torch.from_numpy"),
    "nchw_images": (lambda x: x.permute(0, 3, 1, 2).contiguous(), r"NCHW\? channels go last"),
    "fewer_images_than_params": (lambda x: x[:3], r"params.top: expected torch.int64 \[3\]"),
}


@pytest.mark.parametrize("case", sorted(APPLY_LEE_BAD))
def test_apply_lee_refuses_images_it_would_turn_into_wrong_output(case: str) -> None:
    # float images in [0, 1] were read as 0..255 values: near-constant output, no error
    change, message = APPLY_LEE_BAD[case]
    a = _batch_args(b=4, n=4)
    with pytest.raises(PipelineInputError, match=message):
        apply_lee(change(a["data"]), a["params"], MEAN, STD)


def test_apply_lee_refuses_an_output_dtype_that_is_not_floating() -> None:
    a = _batch_args(b=4, n=4)
    with pytest.raises(PipelineInputError, match="dtype: expected torch.float32"):
        apply_lee(a["data"], a["params"], MEAN, STD, dtype=torch.uint8)


def test_augment_rows_checks_cpu_rows_against_the_data() -> None:
    a = {**_batch_args(), "rows": torch.tensor([0, 1, 2, 12])}
    with pytest.raises(PipelineInputError, match=r"augment_rows rows: expected values in \[0, 12\)"):
        augment_rows(**a)


@pytest.mark.parametrize(
    "kwargs,message",
    [({"pad": -1}, "pad: expected an integer >= 0"), ({"n": -2}, "n: expected"), ({"pad": 2.5}, "float 2.5"),
     ({"strength": 1.5}, r"strength: expected a number in \[0, 1\]")],
)  # fmt: skip
def test_draw_lee_params_refuses_impossible_parameters(kwargs: dict, message: str) -> None:
    args = {"n": 4, "generator": torch.Generator(), "pad": 4, **kwargs}
    with pytest.raises(PipelineInputError, match=message):
        draw_lee_params(**args)


def test_augment_rows_triton_checks_rows_before_the_upload() -> None:
    triton_aug = pytest.importorskip("fsmtl.pipelines.triton_aug", reason="triton is not installed")
    a = {**_batch_args(), "rows": torch.tensor([0, 1, 2, 100000])}
    with pytest.raises(PipelineInputError, match=r"augment_rows_triton rows: expected values in \[0, 12\)"):
        triton_aug.augment_rows_triton(**a)


def test_torch_backend_checks_its_pad_once_at_construction(tiny_shards: Path) -> None:
    s = open_shards(tiny_shards)
    with pytest.raises(FsmtlError, match=r"TorchBackend pad \(image 32x32\)"):
        TorchBackend(s.split("train"), list(s.mean), list(s.std), CFG, 40)


# --- PipelineConfig / check_request ------------------------------------------------------------

CONFIG_BAD = [
    ({"out_dtype": torch.int64}, "out_dtype: expected torch.float32, torch.float16 or torch.bfloat16, got dtype"),
    ({"out_dtype": torch.uint8}, "out_dtype"),
    ({"out_dtype": "bfloat16"}, "out_dtype.*str 'bfloat16'"),
    ({"ways": 5.0}, "ways: expected an integer >= 1, got float 5.0"),
    ({"shots": 2.5}, "shots: expected an integer >= 1, got float 2.5"),
    ({"ways": "5"}, "ways: expected an integer >= 1, got str '5'"),
    ({"ways": True}, "ways: expected an integer"),
    ({"queries": -1}, "queries: expected an integer >= 0"),
    ({"seed": None}, "seed: expected an integer"),
    ({"seed": 2**64}, "seed: expected an integer in"),
    ({"padding": 2.5}, "padding.*float 2.5"),
    ({"padding": -1}, "padding"),
    ({"workers": -1}, "workers"),
    ({"device": "gpu"}, "device: expected 'cpu', 'cuda' or 'cuda:N', got str 'gpu'"),
    ({"device": "meta"}, "device: expected"),
    ({"device": 0}, "device: expected"),
    ({"jitter": "no"}, "jitter: expected True or False"),
    ({"memory_budget_gb": float("nan")}, "memory_budget_gb"),
    ({"backend": "nope"}, "backend: expected one of 'torch', 'dali', 'ffcv', 'reference'"),
]


@pytest.mark.parametrize("change,message", CONFIG_BAD, ids=[str(c) for c, _ in CONFIG_BAD])
def test_pipeline_config_refuses_settings_of_the_wrong_type_or_range(change: dict, message: str) -> None:
    with pytest.raises(FsmtlError, match=message) as e:
        replace(CFG, **change)
    assert str(e.value).startswith("pipeline ")


@pytest.mark.parametrize(
    "mean,std",
    [(MEAN, [0.27, float("nan"), 0.28]), (MEAN, [0.27, -0.1, 0.28]), ([0.4, float("inf"), 0.4], STD), (MEAN, STD[:1]), (["a", "b", "c"], STD)],
)  # fmt: skip
def test_check_request_refuses_mean_std_that_would_give_nan_images(tiny_shards: Path, mean: list, std: list) -> None:
    split = open_shards(tiny_shards).split("train")
    with pytest.raises(FsmtlError, match=r"pipeline mean/std: expected 3 finite values each \(one per channel, std > 0\)"):
        build_task_loader(split, mean, std, CFG)


# --- TaskLoader.load_state_dict ----------------------------------------------------------------


def _same(a: TaskBatch, b: TaskBatch) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def split_and_norm(tiny_shards: Path) -> tuple[SplitData, tuple, tuple]:
    s = open_shards(tiny_shards)
    return s.split("train"), s.mean, s.std


def test_a_closed_loader_refuses_load_state_dict_instead_of_reopening(split_and_norm) -> None:
    split, mean, std = split_and_norm
    loader = build_task_loader(split, mean, std, CFG)
    next(loader)
    state = loader.state_dict()
    loader.close()
    with pytest.raises(RuntimeError, match="TaskLoader is closed"):
        loader.load_state_dict(state)
    with pytest.raises(RuntimeError, match="TaskLoader is closed"):
        next(loader)


def _bad_states(good: dict) -> dict[str, tuple[object, str]]:
    no_gen = {k: v for k, v in good.items() if k != "generator"}
    return {
        "short_generator": ({**good, "generator": torch.zeros(10, dtype=torch.uint8)}, "generator: expected a CPU torch.Generator state"),
        "float_generator": ({**good, "generator": good["generator"].float()}, "generator: expected"),
        "missing_key": (no_gen, "missing generator"),
        "negative_batches": ({**good, "batches": -1}, "batches: expected an integer >= 0"),
        "not_a_dict": ([1, 2], "expected the dict TaskLoader.state_dict"),
        "another_seed": ({**good, "seed": 1}, "saved by a loader with seed=1; this loader has seed=0"),
        "another_stream": ({**good, "backend": "reference"}, "stream='reference'.*reference has its own"),
        "another_config": ({**good, "config": {**good["config"], "shots": 1, "jitter": False}}, "shots=1, jitter=False; this loader has shots=2, jitter=True"),
        "another_elastic": ({**good, "config": {**good["config"], "elastic_px": 1.5}}, "elastic_px=1.5; this loader has elastic_px=0.0"),
    }  # fmt: skip


@pytest.mark.parametrize("case", sorted(_bad_states({"generator": torch.zeros(1), "config": {}})))
def test_a_refused_state_leaves_the_loader_running_where_it_was(split_and_norm, case: str) -> None:
    split, mean, std = split_and_norm
    with build_task_loader(split, mean, std, CFG) as ref:
        expected = [next(ref) for _ in range(3)]
    with build_task_loader(split, mean, std, CFG) as loader:
        next(loader)
        state, message = _bad_states(loader.state_dict())[case]
        with pytest.raises(FsmtlError, match=message):
            loader.load_state_dict(state)  # type: ignore[arg-type]
        assert _same(next(loader), expected[1]) and _same(next(loader), expected[2])


def test_a_state_saved_before_states_held_the_config_still_resumes(split_and_norm) -> None:
    split, mean, std = split_and_norm
    with build_task_loader(split, mean, std, CFG) as loader:
        next(loader)
        old = {k: v for k, v in loader.state_dict().items() if k != "config"}
        want = next(loader)
    with build_task_loader(split, mean, std, replace(CFG, prefetch=True)) as resumed:
        resumed.load_state_dict(old)
        assert _same(next(resumed), want)


def test_a_loader_is_a_task_loader(split_and_norm) -> None:
    split, mean, std = split_and_norm
    with build_task_loader(split, mean, std, CFG) as loader:
        assert isinstance(loader, TaskLoader) and loader.state_dict()["config"]["shots"] == 2


# --- ExportCache (the DALI/FFCV on-the-fly export folder) --------------------------------------


def test_export_cache_folder_is_removed_when_the_cache_is_garbage_collected() -> None:
    cache = ExportCache()
    folder = cache.dir()
    (folder / "images.npy").write_bytes(b"x" * 100)
    del cache
    gc.collect()
    assert not folder.exists()


def test_export_cache_folder_is_removed_at_interpreter_exit_and_close_is_idempotent(tmp_path: Path) -> None:
    code = "from pipelines.formats import ExportCache\nc = ExportCache()\n(c.dir() / 'f').write_text('x')\nprint(c.dir())\n"
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code], check=False, cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    folder = Path(r.stdout.strip())
    assert folder.name.startswith("fsmtl-export-") and not folder.exists()
    cache = ExportCache()
    kept = cache.dir()
    cache.close()
    cache.close()
    assert not kept.exists() and cache.path is None
    assert cache.dir() != kept and cache.dir().is_dir()  # a fresh folder on reuse
    cache.close()


def test_lee_params_of_the_wrong_kind_are_named() -> None:
    a = _batch_args()
    with pytest.raises(PipelineInputError, match="params: expected LeeParams"):
        augment_rows(a["data"], a["rows"], (1, 2, 3), MEAN, STD)  # type: ignore[arg-type]
    half = LeeParams(*a["params"][:3], None, a["params"].order, 4)  # type: ignore[misc]
    with pytest.raises(PipelineInputError, match="factors and order both set"):
        augment_rows(a["data"], a["rows"], half, MEAN, STD)
