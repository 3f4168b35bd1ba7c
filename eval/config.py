"""EvalConfig: the one place the evaluation stage's settings and defaults live."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from fsmtl.models.heads import HEAD_NAMES
from fsmtl.core.checks import INT64_MAX, SEED_MAX, check_int, check_real
from fsmtl.core.device import DEVICE_NAMES, check_fits, is_device_name
from fsmtl.core.errors import FsmtlError
from fsmtl.pipelines.transforms import TEST_TRANSFORMS
from fsmtl.preprocess.synthetic import MIN_IMAGE_SIZE as MIN_SIDE  # the smallest side a shard holds
from fsmtl.train.config import TrainConfig  # its defaults stand for what a run's config does not say



@dataclass(frozen=True)
class EvalConfig:
    """Settings of ``fsmtl eval`` (the seed's test protocol by default)."""

    run: str | None = None  # run directory (or a checkpoint file)
    checkpoint: str | None = None  # best | last | path to a .pt file; None: best, or --run's own file
    split: str = "test"
    ways: int | None = None  # None: the run's test_ways (the seed's 5)
    shots: tuple[int, ...] = (1, 5)
    queries: int | None = None  # None: the run's test_queries (the seed's code: 30)
    tasks: int = 2000
    heads: tuple[str, ...] = ("logreg",)
    C: float | None = None  # logistic regression's inverse L2 strength (sklearn's C); None: the run's test_C (the seed's 3)
    svm_C: float = 0.1  # the SVM head's C (MetaOptNet's default)
    ridge_lam: float = 1.0
    finetune_steps: int = 10
    finetune_lr: float = 1e-3
    seed: int = 0  # the episode seed: the same tasks for every head and checkpoint
    within_group: bool | None = None  # each task's classes from one group; None: the run's --val-within-group
    support_views: int | None = None  # augmented support copies the feature heads also fit on; None: the run's
    transforms: str | None = None  # test-time symmetries (TEST_TRANSFORMS) the scores average over; None: the run's
    symmetry_classes: bool | None = None  # fit once, each symmetry's version of a class a class; None: the run's
    batch_tasks: int = 100
    device: str = "auto"
    precision: str | None = None  # None: the run's training precision
    data: str | None = None  # shard directory; None: the checkpoint config's "data"
    json: str | None = None  # None: RUN/reports/eval_<split>_<checkpoint>.json
    verify_data: bool = True  # sha256 of the split's files against meta.json (cached by size+mtime)

    def __post_init__(self) -> None:
        if self.split not in ("test", "val", "train"):
            raise FsmtlError(f"--split: expected test or val, got {self.split!r}")
        if self.ways is not None:
            check_int(self.ways, "--ways", 2, INT64_MAX)
        for name in ("queries", "tasks", "batch_tasks", "finetune_steps"):
            value = getattr(self, name)
            if value is not None:
                check_int(value, f"--{name.replace('_', '-')}", 1, INT64_MAX)
        if not self.shots:
            raise FsmtlError("--shots: expected positive integers, got none")
        for shots in self.shots:
            check_int(shots, "--shots", 1, INT64_MAX)
        check_int(self.seed, "--seed", 0, SEED_MAX)
        if self.support_views is not None:
            check_int(self.support_views, "--support-views", 0, 256)
        if self.transforms is not None and self.transforms not in TEST_TRANSFORMS:
            raise FsmtlError(f"--transforms: expected one of {', '.join(TEST_TRANSFORMS)}, got {self.transforms!r}")
        if self.symmetry_classes is not None and not isinstance(self.symmetry_classes, bool):
            raise FsmtlError(f"--symmetry-classes: expected True or False, got {self.symmetry_classes!r}")
        if not is_device_name(self.device):
            raise FsmtlError(f"--device: expected {DEVICE_NAMES}, got {self.device!r}")
        self._check_fits()
        bad = [h for h in self.heads if h not in HEAD_NAMES]
        if bad or not self.heads:
            raise FsmtlError(f"--head: expected some of {', '.join(HEAD_NAMES)}, got {list(self.heads)}")
        for name in ("C", "svm_C", "ridge_lam", "finetune_lr"):
            if getattr(self, name) is not None:
                check_real(getattr(self, name), f"--{name.replace('_', '-')}", 0.0, lo_open=True)

    def _check_fits(self) -> None:
        """Refuse a task shape whose one batch of tasks cannot be allocated on the device: the
        images are not known yet (the run names the data), so the bound counts the smallest image the
        shards hold (MIN_IMAGE_SIZE x MIN_IMAGE_SIZE x 1 as float32): no data passes a shape
        this refuses."""
        ways, queries = self.ways or 2, self.queries or 1
        images = min(self.batch_tasks, self.tasks) * ways * (max(self.shots) + queries)
        check_fits("--batch-tasks/--tasks/--ways/--shots/--queries",
                   f"a batch's {images:,} float32 images of at least {MIN_SIDE}x{MIN_SIDE}",
                   images * MIN_SIDE * MIN_SIDE * 4, self.device)
        picks = self.tasks * ways * (max(self.shots) + queries)  # every test task's image indices, int64
        check_fits("--tasks/--ways/--shots/--queries", f"the {picks:,} image indices of the test tasks", picks * 8, "cpu")

    def for_run(self, run_config: dict) -> "EvalConfig":
        """Fill the task shape left unset from the run's training config (its ``test_ways``,
        ``test_queries``, ``val_within_group``, ``test_support_views``, ``test_transforms``,
        ``test_symmetry_classes`` and ``test_C``; the seed's 5, 30, whole-split tasks, no support views,
        no symmetries and C=3 when the run does not say)."""
        def run_says(key: str) -> Any:
            return run_config.get(key) or getattr(TrainConfig, key)

        ways = self.ways if self.ways is not None else int(run_says("test_ways"))
        queries = self.queries if self.queries is not None else int(run_says("test_queries"))
        grouped = self.within_group if self.within_group is not None else bool(run_says("val_within_group"))
        views = self.support_views if self.support_views is not None else int(run_says("test_support_views"))
        symmetries = self.transforms if self.transforms is not None else str(run_says("test_transforms"))
        as_classes = (self.symmetry_classes if self.symmetry_classes is not None
                      else bool(run_says("test_symmetry_classes")))  # fmt: skip
        c = self.C if self.C is not None else float(run_says("test_C"))
        return replace(self, ways=ways, queries=queries, within_group=grouped, support_views=views,
                       transforms=symmetries, symmetry_classes=as_classes, C=c)

    def head_options(self) -> dict[str, dict[str, float]]:
        """Options of the feature heads in ``heads`` (evaluate_backbone refuses options for others)."""
        every = {"logreg": {"C": TrainConfig.test_C if self.C is None else self.C}, "svm": {"C": self.svm_C}, "ridge": {"lam": self.ridge_lam}}
        return {h: o for h, o in every.items() if h in self.heads}
