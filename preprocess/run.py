"""One conversion, end to end: pick the converter, write atomically, export extra formats, summarise."""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np

from fsmtl.core.errors import FsmtlError
from fsmtl.core.optional import import_optional
from fsmtl.preprocess.config import BENCHMARK_OPTIONS, PreprocessConfig
from fsmtl.preprocess.shard_writer import ShardWriter
from fsmtl.preprocess.shards import SPLITS, SplitData
_CONVERTERS = {
    "cifar-fs": "fsmtl.preprocess.convert_cifar:convert_cifar",
    "fc100": "fsmtl.preprocess.convert_cifar:convert_cifar",
    "mini-imagenet": "fsmtl.preprocess.convert_mini:convert_mini_imagenet",
    "tiered-imagenet": "fsmtl.preprocess.convert_tiered:convert_tiered_imagenet",
    "omniglot": "fsmtl.preprocess.convert_omniglot:convert_omniglot",
    "imagefolder": "fsmtl.preprocess.convert_imagefolder:convert_imagefolder",
    "synthetic": "fsmtl.preprocess.convert_synthetic:convert_synthetic",
}
# format -> (exporter module, the library it needs, the pip extra that installs it)
_EXPORTERS = {
    "ffcv": ("fsmtl.preprocess.export_ffcv", "ffcv", "ffcv"),
    "dali": ("fsmtl.preprocess.export_dali", "nvidia.dali", "dali"),
}


def _converter(benchmark: str) -> Callable[[PreprocessConfig, ShardWriter], list[Path]]:
    module, fn = _CONVERTERS[benchmark].split(":")
    return getattr(importlib.import_module(module), fn)


def load_exporters(formats: tuple[str, ...]) -> dict[str, ModuleType]:
    """Import the exporter of every extra format, before any work is done.

    Raises:
        FsmtlError: naming the missing library and the pip extra that installs it.
    """
    out = {}
    for fmt in formats:
        if fmt == "npy":
            continue
        module, lib, extra = _EXPORTERS[fmt]
        try:
            out[fmt] = import_optional(module)
        except ImportError as e:
            raise FsmtlError(
                f"--format {fmt}: needs {lib}, which does not import here ({e}); "
                f"install it with: pip install 'fsmtl[{extra}]'"
            ) from None
    return out


def _split_from_tmp(w: ShardWriter, split: str) -> SplitData:
    """The split just written into the writer's temporary directory, memory-mapped."""
    d = w.tmp_dir / split
    labels = np.load(d / "labels.npy")
    doc = json.loads((d / "classes.json").read_text(encoding="utf-8"))
    counts = np.bincount(labels, minlength=len(doc["classes"]))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    images = np.load(d / "images.npy", mmap_mode="r")
    return SplitData(split, images, labels, offsets, doc["classes"], doc.get("categories"))


def export_formats(w: ShardWriter, exporters: dict[str, ModuleType], progress: bool = True) -> None:
    """Write each extra format of every split into the writer's directory (hashed into meta)."""
    for split in [s for s in SPLITS if s in w.split_summary()]:
        data = _split_from_tmp(w, split)
        if "ffcv" in exporters:
            exporters["ffcv"].export_split_ffcv(data, w.add_file(f"{split}/data.beton"), progress=progress)
        if "dali" in exporters:
            written = exporters["dali"].export_split_dali(data, w.tmp_dir / split / "dali")
            for p in written:
                w.add_file(Path(p).resolve().relative_to(w.tmp_dir.resolve()).as_posix())


def convert(cfg: PreprocessConfig) -> dict[str, Any]:
    """Convert ``cfg.src`` into a checked shard set at ``cfg.out``.

    Returns:
        {"out", "benchmark", "splits": {split: {"n_images", "n_classes", "bytes"}}, "seconds"}.

    Raises:
        FsmtlError: for bad input; nothing is left at ``cfg.out`` (or beside it).
    """
    t0 = time.perf_counter()
    exporters = load_exporters(cfg.formats)
    convert_fn = _converter(cfg.benchmark)
    relevant = {"benchmark", "out", "src", "formats", "size", "workers", "normalization", *BENCHMARK_OPTIONS.get(cfg.benchmark, ())}
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k in relevant}
    options["size"] = cfg.out_size  # the size written, also when the benchmark's default was used
    extra = {"formats": list(cfg.formats), "converter_options": options}
    with ShardWriter(cfg.out, cfg.benchmark, force=cfg.force, extra_meta=extra, normalization=cfg.norm_constants) as w:
        w.sources = convert_fn(cfg, w)
        export_formats(w, exporters, cfg.progress)
        summary = w.split_summary()
        out = w.commit()
    return {
        "out": str(out),
        "benchmark": cfg.benchmark,
        "splits": summary,
        "seconds": time.perf_counter() - t0,
    }


def format_summary(result: dict[str, Any]) -> str:
    """The end-of-conversion table: images, classes and bytes per split, and the total time."""
    rows = [("split", "images", "classes", "MB")]
    for s, r in result["splits"].items():
        rows.append((s, f"{r['n_images']:,}", str(r["n_classes"]), f"{r['bytes'] / 1e6:,.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"{result['benchmark']} -> {result['out']}"]
    lines += [
        "  ".join(v.rjust(wd) if i else v.ljust(wd) for i, (v, wd) in enumerate(zip(r, widths)))
        for r in rows
    ]
    lines.insert(2, "  ".join("-" * wd for wd in widths))
    lines.append(f"done in {result['seconds']:.1f} s")
    return "\n".join(lines)


def describe_shards(meta: dict[str, Any]) -> str:
    """A shard directory at a glance (from its meta.json): benchmark, image shape, formats, the train
    mean/std, and per split the images, classes and the smallest/largest class."""
    h, w, c = meta["image_shape"]
    stats = " ".join(f"{v:.4f}" for v in meta["mean"]), " ".join(f"{v:.4f}" for v in meta["std"])
    source = {"seed": "the seed's", "data": "train"}.get(meta.get("normalization", "data"), "train")
    lines = [f"{meta['benchmark']}, {h}x{w}x{c} uint8, formats {','.join(meta.get('formats', ['npy']))}; "
             f"normalised with {source} mean [{stats[0]}] std [{stats[1]}]"]  # fmt: skip
    rows = [("split", "images", "classes", "per class")]
    for name, sp in meta["splits"].items():
        sizes = np.diff(np.asarray(sp["class_offsets"], dtype=np.int64))
        per = f"{sizes.min()}" if sizes.min() == sizes.max() else f"{sizes.min()}-{sizes.max()}"
        rows.append((name, f"{sp['n_images']:,}", str(sp["n_classes"]), per))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    table = ["  ".join(v.rjust(wd) if i else v.ljust(wd) for i, (v, wd) in enumerate(zip(r, widths))) for r in rows]
    table.insert(1, "  ".join("-" * wd for wd in widths))
    return "\n".join(lines + table)

