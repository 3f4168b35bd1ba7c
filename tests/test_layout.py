"""The package layout: one top-level name, `fsmtl`, with the stage folders mapped into it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("preprocess", "pipelines", "models", "train", "eval", "benchmarks")


def test_a_wheel_of_the_repository_has_the_one_top_level_package_fsmtl(tmp_path: Path) -> None:
    try:
        import setuptools  # noqa: F401 - the build back end, without fetching one
    except ImportError:
        pytest.skip("setuptools is not installed here (pip wheel would download it)")
    # built from a copy: setuptools writes build/ and *.egg-info beside the sources
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "results")
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("fsmtl", *STAGES):
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    out = tmp_path / "wheel"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = out.glob("fsmtl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"fsmtl"}
    for stage in STAGES:  # every module of every stage, under fsmtl/<stage>/
        for py in (ROOT / stage).rglob("*.py"):
            if "__pycache__" in py.parts:
                continue
            assert f"fsmtl/{py.relative_to(ROOT).as_posix()}" in names, py
    assert any(n.startswith("fsmtl/preprocess/splits/") and n.endswith(".txt") for n in names)  # shipped split lists


def test_stages_import_only_as_fsmtl_subpackages(tmp_path: Path) -> None:
    # from a folder that is not the repository: the stage names are not top-level modules
    code = ("import importlib.util, fsmtl.train.run, fsmtl.eval, fsmtl.benchmarks.common;"
            f"print(all(importlib.util.find_spec(s) is None for s in {STAGES!r}))")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "True"
