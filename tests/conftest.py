"""Shared fixtures: small synthetic shard sets written in the canonical format."""

from __future__ import annotations

import os
from pathlib import Path

# Tests never need a GPU: Triton kernels (the CUDA augmentation) run in Triton's CPU interpreter.
# Read when a kernel is defined, so it must be set before pipelines.triton_aug is imported. (It is
# inherited by subprocesses; on a GPU machine, time the real kernels with gpu_check.sh, not pytest.)
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from fsmtl.preprocess.synthetic import SyntheticConfig, write_synthetic_shards

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REQUIRE_BACKENDS = os.environ.get("FSMTL_REQUIRE_BACKENDS") == "1"


def write_synthetic(out: Path, cfg: SyntheticConfig) -> Path:
    """Write a synthetic shard set to ``out`` and return it."""
    return write_synthetic_shards(out, cfg)


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32x32x3, 8/5/5 classes x 30 images: fast enough for any test."""
    cfg = SyntheticConfig(image_size=32, classes=(8, 5, 5), per_class=30, seed=1)
    return write_synthetic(tmp_path_factory.mktemp("shards") / "tiny32", cfg)


@pytest.fixture(scope="session")
def tiny_shards_84(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """84x84x3, 6/5/5 classes x 20 images: the mini-ImageNet image shape."""
    cfg = SyntheticConfig(image_size=84, classes=(6, 5, 5), per_class=20, seed=2)
    return write_synthetic(tmp_path_factory.mktemp("shards") / "tiny84", cfg)


def optional_import(name: str):
    """Import an optional back end; skip the test if it is missing, fail if CI requires it."""
    try:
        return __import__(name)
    except Exception as e:  # ImportError, or a broken native library
        if REQUIRE_BACKENDS:
            pytest.fail(f"FSMTL_REQUIRE_BACKENDS=1 but {name} does not import: {e}")
        pytest.skip(f"{name} not installed: {e}")


def rewrite_meta(root: Path, meta: dict) -> None:
    """Write ``root/meta.json`` and its ``meta.sha256`` together, as the shard writer does (for tests
    that build a shard set of another shape from a converted one)."""
    import hashlib
    import json

    (root / "meta.json").write_text(json.dumps(meta))
    (root / "meta.sha256").write_text(hashlib.sha256((root / "meta.json").read_bytes()).hexdigest() + "\n")
