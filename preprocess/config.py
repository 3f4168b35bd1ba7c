"""``PreprocessConfig``: every setting of the conversion stage, and the only place for defaults."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

from fsmtl.core.checks import SEED_MAX, check_int

from fsmtl.core.device import check_fits
from fsmtl.core.errors import FsmtlError
from fsmtl.preprocess.synthetic import MIN_IMAGE_SIZE

BENCHMARKS: tuple[str, ...] = (
    "mini-imagenet",
    "tiered-imagenet",
    "cifar-fs",
    "fc100",
    "omniglot",
    "imagefolder",
    "synthetic",
)
FORMATS: tuple[str, ...] = ("npy", "ffcv", "dali")
NORMALIZATIONS: tuple[str, ...] = ("auto", "seed", "data")
# The per-channel mean and std (0..1 scale) the seed normalises each benchmark with: Lee19's
# (MetaOptNet's) constants, which it uses for mini- and tiered-ImageNet alike, and CIFAR-100's
# for CIFAR-FS and FC100 (the seed's benchmarks/*_benchmark.py). They go into meta.json, where
# training and evaluation read them; "data" uses the train split's own statistics instead.
SEED_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mini-imagenet": ((120.39586422 / 255, 115.59361427 / 255, 104.54012653 / 255),
                      (70.68188272 / 255, 68.27635443 / 255, 72.54505529 / 255)),
    "cifar-fs": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}  # fmt: skip
SEED_NORMALIZATION["tiered-imagenet"] = SEED_NORMALIZATION["mini-imagenet"]
SEED_NORMALIZATION["fc100"] = SEED_NORMALIZATION["cifar-fs"]
# output side length when --size is not given
DEFAULT_SIZE = {"omniglot": 32, "cifar-fs": 32, "fc100": 32}
FALLBACK_SIZE = 84
MAX_WORKERS = 1024  # --workers: decoding threads; a thread a CPU is the default, 1024 is past any CPU count
MAX_SIZE = 1024  # --size range: MIN_IMAGE_SIZE (the synthetic generator's smallest) .. MAX_SIZE
# The benchmark-specific options and the benchmarks that read them (beyond src/out/size/workers/
# formats/normalization, which every converter reads). Giving one a non-default value for any other
# benchmark is an error; run.py records these in meta.json.
BENCHMARK_OPTIONS: dict[str, tuple[str, ...]] = {
    "omniglot": ("rotations", "mirrors", "val_alphabets", "test_alphabets"),
    "imagefolder": ("channels", "seed", "split_file", "ratios", "group_folders"),
    "synthetic": ("channels", "seed", "classes", "per_class", "difficulty"),
}


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _readers(option: str) -> str:
    """The benchmarks that read ``option``, for a message: "imagefolder and synthetic"."""
    names = [b for b in BENCHMARKS if option in BENCHMARK_OPTIONS.get(b, ())]
    return " and ".join(names) if len(names) <= 2 else ", ".join(names[:-1]) + " and " + names[-1]


def _within(a: Path, b: Path) -> bool:
    """Whether ``a`` is ``b`` or lies inside it; compared as files (``samefile``), so symlinks and
    case-insensitive file systems do not hide an overlap. Parts of ``a`` that do not exist yet are
    skipped."""
    if not b.exists():
        return False
    for p in (a.absolute(), *a.absolute().parents):
        try:
            if p.exists() and os.path.samefile(p, b):
                return True
        except OSError:
            continue
    return False


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of one ``fsmtl convert`` run.

    Attributes:
        benchmark: one of :data:`BENCHMARKS`.
        out: the output shard directory (written atomically).
        src: the user's downloaded files (unused by ``synthetic``).
        force: overwrite an existing ``out``.
        formats: output formats; "npy" (canonical, always written: added when left out) plus
            "ffcv" and/or "dali".
        size: output side length, MIN_IMAGE_SIZE..MAX_SIZE (None: 32 for Omniglot and CIFAR,
            84 otherwise). CIFAR data is never resized; tiered-ImageNet is resized only when given.
        channels: 1 or 3 (imagefolder, synthetic).
        workers: decoding threads (None: all CPUs).
        seed: seed of imagefolder's ratio split and of the synthetic generator.
        rotations: Omniglot: add 90/180/270-degree rotations of train classes as new classes
            (None: yes).
        mirrors: Omniglot: add the left-right mirror image of every train class as a new class
            (with rotations, its rotations too: eight classes a character; None: the converter's
            default, ``convert_omniglot.DEFAULT_MIRRORS``).
        val_alphabets: Omniglot: hold out this many background alphabets as the val split (None: 1).
        group_folders: imagefolder: the tree is <src>/<group>/<class>/<image>; each class's group
            is recorded (classes.json categories) for tasks within one group.
        test_alphabets: Omniglot: hold out this many background alphabets as the test split (None:
            2 when no images_evaluation set is given, else 0: the evaluation set is the test split).
        split_file: imagefolder: a file assigning each class folder to a split.
        ratios: imagefolder: fractions of classes for (train, val, test), used without split_file.
        classes: synthetic: classes per split (train, val, test).
        per_class: synthetic: images per class.
        difficulty: synthetic: scale of nuisance variation, >= 0 (0 = clean prototypes).
        normalization: the mean/std written to meta.json: "seed" (the seed's constants for
            mini-/tiered-ImageNet, CIFAR-FS and FC100), "data" (the train split's statistics), or
            "auto" (seed where the benchmark has them, else data).
        progress: show progress bars.

    The options of :data:`BENCHMARK_OPTIONS` are read only by the benchmarks listed there; a value
    other than the default for any other benchmark is an error naming the flag.
    """

    benchmark: str
    out: Path
    src: Path | None = None
    force: bool = False
    formats: tuple[str, ...] = ("npy",)
    size: int | None = None
    channels: int = 3
    workers: int | None = None
    seed: int = 0
    rotations: bool | None = None  # None: omniglot's default, on
    mirrors: bool | None = None  # None: omniglot's default
    val_alphabets: int | None = None  # None: 1
    test_alphabets: int | None = None  # None: 2 without an evaluation set, else 0
    split_file: Path | None = None
    group_folders: bool = False  # imagefolder: <src>/<group>/<class>/<image>, groups recorded
    ratios: tuple[float, float, float] = (0.64, 0.16, 0.20)
    classes: tuple[int, int, int] = (64, 16, 20)
    per_class: int = 600
    difficulty: float = 1.0
    normalization: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise FsmtlError(
                f"benchmark: expected one of {', '.join(BENCHMARKS)}, got {self.benchmark!r}"
            )
        bad = [f for f in self.formats if f not in FORMATS]
        if bad:
            raise FsmtlError(f"--format: expected a comma list of {', '.join(FORMATS)}, got {','.join(self.formats)}")
        # npy is the canonical format, always written: "--format ffcv" means npy and ffcv
        object.__setattr__(self, "formats", tuple(dict.fromkeys(("npy", *self.formats))))
        self._check_src()
        self._check_options_read()
        if self.size is not None and not MIN_IMAGE_SIZE <= self.size <= MAX_SIZE:
            raise FsmtlError(f"--size: expected {MIN_IMAGE_SIZE}..{MAX_SIZE}, got {self.size}")
        if self.channels not in (1, 3):
            raise FsmtlError(f"--channels: expected 1 or 3, got {self.channels}")
        if self.workers is not None:
            check_int(self.workers, "--workers", 1, MAX_WORKERS)
        check_int(self.seed, "--seed", 0, SEED_MAX)
        # Omniglot's background set has 30 alphabets; at least one must stay for training
        for name in ("val_alphabets", "test_alphabets"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), _flag(name), 0, 29)
        finite = all(isinstance(r, (int, float)) and math.isfinite(r) for r in self.ratios)
        if not finite or len(self.ratios) != 3 or min(self.ratios) < 0 or abs(sum(self.ratios) - 1.0) > 1e-6:
            raise FsmtlError(f"--ratios: expected three non-negative fractions summing to 1, got {','.join(map(str, self.ratios))}")
        if self.normalization not in NORMALIZATIONS:
            raise FsmtlError(f"--normalization: expected one of {', '.join(NORMALIZATIONS)}, got {self.normalization!r}")
        if self.normalization == "seed" and self.benchmark not in SEED_NORMALIZATION:
            raise FsmtlError(f"--normalization seed: the seed has constants for {', '.join(SEED_NORMALIZATION)} only, "
                             f"not {self.benchmark}; use data")  # fmt: skip
        if len(self.classes) != 3 or min(self.classes) < 0 or self.per_class < 1:
            raise FsmtlError(
                f"--classes/--per-class: expected 3 counts >= 0 and >= 1 image, got {self.classes} x {self.per_class}"
            )
        if not (math.isfinite(self.difficulty) and self.difficulty >= 0):
            raise FsmtlError(f"--difficulty: expected a number >= 0 (0 = clean prototypes), got {self.difficulty}")
        if self.benchmark == "synthetic":  # the generated split is written whole: it must fit in memory
            c = 1 if self.channels == 1 else 3
            check_fits("--classes/--per-class/--size", f"the largest split's {max(self.classes) * self.per_class:,} "
                       f"uint8 images of {self.out_size}x{self.out_size}x{c}",
                       max(self.classes) * self.per_class * self.out_size**2 * c, "cpu")

    def _check_src(self) -> None:
        """--src: required by every benchmark but synthetic, refused by synthetic, apart from --out."""
        if self.benchmark == "synthetic" and self.src is not None:
            raise FsmtlError("--src: synthetic data is generated, not read; leave --src out")
        if self.benchmark != "synthetic" and self.src is None:
            raise FsmtlError(f"--src: required for {self.benchmark} (the downloaded files)")
        if self.src is not None and (_within(Path(self.out), Path(self.src)) or _within(Path(self.src), Path(self.out))):
            raise FsmtlError(f"--out {self.out}: must lie outside --src {self.src} (and not contain it)")

    def _check_options_read(self) -> None:
        """A benchmark-specific option set away from its default for a benchmark that ignores it."""
        reads = BENCHMARK_OPTIONS.get(self.benchmark, ())
        for f in fields(self):
            value = getattr(self, f.name)
            value = tuple(value) if isinstance(value, list) else value  # (64, 16, 20) == [64, 16, 20]
            specific = any(f.name in opts for opts in BENCHMARK_OPTIONS.values())
            if specific and f.name not in reads and value != f.default:
                raise FsmtlError(f"{_flag(f.name)}: only for {_readers(f.name)}, not {self.benchmark}")

    @property
    def norm_constants(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """(mean, std) to write to meta.json, or None for the train split's own statistics."""
        return None if self.normalization == "data" else SEED_NORMALIZATION.get(self.benchmark)

    @property
    def out_size(self) -> int:
        """The output side length: ``size`` or the benchmark's default."""
        return (
            self.size if self.size is not None else DEFAULT_SIZE.get(self.benchmark, FALLBACK_SIZE)
        )
