"""``TrainConfig``: the one source of the trainer's defaults (the seed's published settings; docs/training.md lists them)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from fsmtl.core.checks import INT64_MAX, SEED_MAX, check_int, check_real

from fsmtl.core.device import DEVICE_NAMES, is_device_name
from fsmtl.core.errors import FsmtlError
from fsmtl.pipelines.augment import WARP_LIMITS
from fsmtl.pipelines.transforms import TEST_TRANSFORMS

OPTIMIZERS = ("sgd", "sgdp", "sgdw", "adam", "adamw", "adamax", "radam", "adabound", "adamp")
SCHEDULERS = ("plateau", "step", "cosine", "budget", "none")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
PIPELINES = ("torch", "dali", "ffcv", "reference")
WANDB_MODES = ("offline", "online", "disabled")
AUGMENTS = ("lee", "none")
VAL_SPLITS = ("auto", "val", "test", "none")


# Flag help for ``fsmtl train --help``, grouped as the help screen shows them: (group, text).
# Every TrainConfig field has an entry (tested); "{choices}" is filled in by the parser.
FIELD_HELP: dict[str, tuple[str, str]] = {
    "data": ("run", "shard directory written by 'fsmtl convert' (required unless --resume)"),
    "out": ("run", "run directory: config.json, metrics.jsonl, checkpoints/, wandb/"),
    "preset": ("run", "apply a preset first, then the other flags: {choices}"),
    "resume": ("run", "continue this run directory exactly from checkpoints/last.pt; budgets, logging and speed flags may change, the optimizer, schedule, task shape, seed and --out may not (refused)"),
    "overwrite": ("run", "start over in an --out that already holds a run: its checkpoints, metrics.jsonl and eval reports are deleted first (without it, such an --out is refused)"),
    "algorithm": ("method", "{choices}: mtl is the seed's multi-task learning, the others episodic baselines"),
    "model": ("method", "backbone: {choices}"),
    "drop_rate": ("method", "dropout / DropBlock rate of ResNet-12 (the seed: 0.1)"),
    "width": ("method", "conv4: channels of every block (none = 64, Prototypical Networks' width)"),
    "pools": ("method", "conv4: 2x2 max-pools, after the first this-many blocks (none = 4, Prototypical Networks'; 3 keeps the last block's map: 4x the features at the same cost)"),
    "norm_train_features": ("method", "L2-normalise features before the task heads in training (the seed's published commands turn it on for every benchmark but FC100)"),
    "trainval": ("method", "train on train + val classes, as the seed's flag (which then validates on the test split: see --val-split)"),
    "val_split": ("method", "the split validation runs on (it picks best.pt and drives the plateau scheduler and early stopping): {choices}; auto = val, or with --trainval test, as the seed did; none = no validation"),
    "train_ways": ("tasks", "classes per training task"),
    "train_shots": ("tasks", "images per class of a training task (with MTL all are trained on: no split)"),
    "train_queries": ("tasks", "more images per class of a training task (the queries of episodic baselines)"),
    "meta_batch_size": ("tasks", "training tasks per optimizer step, all in one forward pass"),
    "train_within_group": ("tasks", "every training task's classes from one group of the data (an Omniglot alphabet, a tiered-ImageNet category, an imagefolder group folder); groups with fewer than --train-ways classes are left out"),
    "val_within_group": ("tasks", "every validation task's classes from one group (Omniglot's within-alphabet protocol); fsmtl eval follows it unless told otherwise"),
    "test_ways": ("tasks", "classes per validation task"),
    "test_shots": ("tasks", "support images per class of a validation task"),
    "test_support_views": ("tasks", "fsmtl eval's default test-time augmentation: the feature heads also fit on this many augmented copies of each support image (the run's crop padding, affine warps and elastic distortions); validation fits on the support images alone, for speed"),
    "test_transforms": ("tasks", "fsmtl eval's default test-time symmetries: {choices}; each task is also scored with all its images rotated (rot4: the four quarter turns; d4: and mirrored; flip: mirrored only) and the heads' scores averaged; validation scores the images as they are, for speed"),
    "test_symmetry_classes": ("tasks", "with --test-transforms: fsmtl eval fits each task once on all versions of its support set, every version of a class a class of its own (as rotated classes are in training), and scores each version's queries against its own classes"),
    "test_C": ("tasks", "C of the logistic regression head (inverse L2 strength, scikit-learn's) that validation fits and fsmtl eval's default; the seed's 3"),
    "test_queries": ("tasks", "query images per class of a validation task (the seed's code: 30; its paper: 50)"),
    "optimizer": ("optimization", "{choices} (sgdp, sgdw, adabound, adamp need torch-optimizer)"),
    "lr": ("optimization", "learning rate (adamax runs at twice this, as the seed)"),
    "weight_decay": ("optimization", "weight decay; none = the seed's default for the optimizer (0, adamw 0.01)"),
    "momentum": ("optimization", "momentum of the SGD family"),
    "grad_clip": ("optimization", "clip the global gradient norm to this; 0 = off (the seed does not clip)"),
    "scheduler": ("optimization", "learning-rate schedule: {choices}; budget = set every step from the fraction of the run's budget spent (--max-minutes, --max-epochs, --max-steps: the largest), a cosine to --lr-floor at its end (one-cycle with --warmup-frac); the others step once an epoch"),
    "warmup_frac": ("optimization", "budget: linear warm-up from lr/25 over this fraction of the budget (0 = none)"),
    "lr_floor": ("optimization", "budget: the lr factor the cosine ends at (a fraction of --lr)"),
    "plateau_factor": ("optimization", "plateau: multiply the lr by this when validation accuracy stalls"),
    "plateau_patience": ("optimization", "plateau: epochs without improvement before the lr drops"),
    "step_size": ("optimization", "step: epochs between lr drops"),
    "step_gamma": ("optimization", "step: lr factor at each drop (the seed: 1.0, i.e. constant)"),
    "cosine_epochs": ("optimization", "cosine: epochs from lr to 0; none = follow --max-epochs (or 100 when unbounded): a resume with a larger --max-epochs stretches it, a smaller one is only a budget"),
    "early_stop_patience": ("optimization", "stop after this many epochs without a better validation accuracy"),
    "epoch_length": ("schedule", "training tasks per epoch, as the seed counts them: ceil(epoch-length / (meta-batch-size x ranks)) optimizer steps; validation, scheduler and checkpoints once an epoch"),
    "val_epoch_length": ("schedule", "validation tasks per epoch: the same seeded tasks every epoch"),
    "val_batch_tasks": ("schedule", "validation tasks embedded per forward pass"),
    "max_epochs": ("schedule", "stop after this many epochs (none = until early stopping)"),
    "max_steps": ("schedule", "stop after this many optimizer steps"),
    "snapshot_minutes": ("schedule", "save the weights every this many minutes of training time (time spent saving excluded) as RUN/snapshots/t<seconds>.pt, a checkpoint fsmtl eval --run takes: time-to-accuracy curves without evaluating inside the timed run (one process only)"),
    "max_minutes": ("schedule", "stop once this much wall time has passed in this invocation (the unfinished epoch is checkpointed; --resume finishes it)"),
    "augment": ("data", "training augmentation: {choices} (lee = MetaOptNet's crop, colour jitter, flip)"),
    "jitter": ("data", "colour jitter inside lee (the omniglot preset turns it off; --no-jitter for other greyscale data)"),
    "affine_degrees": ("data", "random rotations of up to +- this many degrees after lee (torch pipeline; 0 = off)"),
    "affine_scale": ("data", "random magnification in [1 - s, 1 + s] after lee (torch pipeline; 0 = off)"),
    "affine_shear": ("data", "random horizontal shear of up to +- this many degrees after lee (torch pipeline; 0 = off)"),
    "elastic_px": ("data", "smooth random elastic distortions after the affine warps: the displacement of each of 4 x 4 control points is normal with this many pixels' standard deviation (torch pipeline; 0 = off)"),
    "flip": ("data", "horizontal flips inside lee (the omniglot preset turns them off: a mirrored character is another character)"),
    "pipeline": ("data", "batch back end: {choices} (reference = the seed's per-image PIL way, for comparison)"),
    "verify_data": ("data", "compare the shards with meta.json's sha256 when they are opened (cached by size and mtime: only the first run after a change hashes)"),
    "workers": ("data", "worker processes of the dali/ffcv/reference back ends; none = one per CPU core"),
    "seed": ("data", "seed of weights, task sampling and augmentation; the same seed gives the same run"),
    "precision": ("speed", "{choices}; auto = bf16 autocast where the device supports it, else fp32; fp16 uses a grad scaler (CUDA)"),
    "channels_last": ("speed", "NHWC memory format (faster convolutions with bf16/fp16)"),
    "compile": ("speed", "torch.compile the training step's module: backbone, heads and loss (a minute of warm-up, then faster steps)"),
    "device": ("speed", "auto (cuda if available, else cpu), cpu, cuda or cuda:N"),
    "wandb": ("logging", "weights & biases mode: {choices} (offline needs no account)"),
    "log_every": ("logging", "steps between host syncs for the running loss and the progress bar"),
    "progress": ("logging", "tqdm progress bars"),
}

def _flag(name: str) -> str:
    """A field's flag: ``meta_batch_size`` -> ``--meta-batch-size``."""
    return "--" + name.replace("_", "-")


FIELD_CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": OPTIMIZERS, "scheduler": SCHEDULERS, "precision": PRECISIONS, "pipeline": PIPELINES,
    "wandb": WANDB_MODES, "augment": AUGMENTS, "val_split": VAL_SPLITS, "test_transforms": tuple(TEST_TRANSFORMS),
}  # fmt: skip


@dataclass
class TrainConfig:
    """Everything a training run needs; stored in ``RUN/config.json`` and in every checkpoint.

    Defaults are the seed's: 5-way 5-shot 5-query tasks, 6 tasks a step, ResNet-12 with drop rate
    0.1, RAdam at lr 1e-3, plateau scheduler on validation accuracy, early stopping after 15
    epochs without improvement, epochs of 1600 training tasks (267 steps of 6), 400 validation tasks.
    """

    data: str = ""  # shard directory (preprocess/ output)
    out: str = "runs/train"  # run directory
    preset: str | None = None  # name of the preset applied before the flags (recorded only)
    algorithm: str = "mtl"  # "mtl" (the seed) or an episodic baseline ("protonet")
    model: str = "resnet12"
    drop_rate: float = 0.1
    width: int | None = None  # conv4's channels; None: the model's default (64)
    pools: int | None = None  # conv4's max-pools (after the first blocks); None: the model's default (4)
    train_ways: int = 5
    train_shots: int = 5
    train_queries: int = 5
    meta_batch_size: int = 6  # tasks per optimizer step
    train_within_group: bool = False  # each training task's classes from one group (SplitData.categories)
    val_within_group: bool = False  # each validation task's classes from one group
    test_ways: int = 5
    test_shots: int = 5
    test_queries: int = 30  # the seed's code (the paper's tables use 50)
    test_support_views: int = 0  # fsmtl eval's default augmented support copies (validation: none)
    test_C: float = 3.0  # the logreg head's C in validation and fsmtl eval's default (the seed's 3)
    test_transforms: str = "none"  # fsmtl eval's default test-time symmetries (TEST_TRANSFORMS; validation: none)
    test_symmetry_classes: bool = False  # with test_transforms: one fit, each symmetry's version of a class a class
    norm_train_features: bool = False
    trainval: bool = False  # train on train + val classes
    val_split: str = "auto"  # auto: "val", or "test" with --trainval (the seed's); "none": no validation
    optimizer: str = "radam"
    lr: float = 1e-3
    weight_decay: float | None = None  # None: the optimizer's seed default (0; adamw 0.01)
    momentum: float = 0.9
    grad_clip: float = 0.0  # max global grad norm; 0 = off (the seed does not clip)
    scheduler: str = "plateau"
    plateau_factor: float = 0.1
    plateau_patience: int = 4
    step_size: int = 20
    step_gamma: float = 1.0
    cosine_epochs: int | None = None  # None: max_epochs, or 100 when unbounded
    warmup_frac: float = 0.0  # budget scheduler: warm-up fraction of the budget
    lr_floor: float = 0.0  # budget scheduler: final lr factor
    early_stop_patience: int = 15
    epoch_length: int = 1600  # training tasks per epoch (the seed's count); see steps_per_epoch()
    val_epoch_length: int = 400  # validation tasks per epoch (the same tasks every epoch)
    val_batch_tasks: int = 50  # validation tasks embedded per forward
    augment: str = "lee"
    jitter: bool = True  # colour jitter inside "lee" (off for Omniglot)
    flip: bool = True  # horizontal flips inside "lee"
    affine_degrees: float = 0.0  # random affine warps after lee (0: off)
    affine_scale: float = 0.0
    affine_shear: float = 0.0
    elastic_px: float = 0.0  # elastic distortions after the affine warps (0: off)
    precision: str = "auto"  # auto: bf16 where supported (CUDA with bf16, CPU), else fp32
    channels_last: bool = True
    compile: bool = False
    pipeline: str = "torch"
    workers: int | None = None
    seed: int = 0
    device: str = "auto"  # auto: cuda if available, else cpu
    max_epochs: int | None = None
    max_steps: int | None = None
    max_minutes: float | None = None
    snapshot_minutes: float | None = None  # RUN/snapshots/t<seconds>.pt every this many training minutes
    wandb: str = "offline"
    log_every: int = 50  # steps between host syncs for the running loss / progress bar
    resume: str | None = None  # run directory to continue exactly
    overwrite: bool = False  # start over in an --out that already holds a run
    verify_data: bool = True  # sha256 of the shards against meta.json at open (cached by size+mtime)
    progress: bool = True  # tqdm bars

    def check(self) -> "TrainConfig":
        """Raise FsmtlError naming the first invalid setting; return self."""
        from fsmtl.models import MODEL_NAMES
        from fsmtl.train.algorithms import ALGORITHMS

        def choice(name: str, options: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in options:
                raise FsmtlError(f"--{name.replace('_', '-')}: expected one of {', '.join(options)}, got {value!r}")

        choice("model", MODEL_NAMES)
        choice("optimizer", OPTIMIZERS)
        choice("scheduler", SCHEDULERS)
        choice("precision", PRECISIONS)
        choice("pipeline", PIPELINES)
        choice("wandb", WANDB_MODES)
        choice("augment", AUGMENTS)
        choice("val_split", VAL_SPLITS)
        choice("test_transforms", tuple(TEST_TRANSFORMS))
        choice("algorithm", tuple(ALGORITHMS))
        self._check_numbers()
        if self.scheduler == "budget" and self.max_minutes is None and self.max_epochs is None and self.max_steps is None:
            raise FsmtlError("--scheduler budget: expected a budget to lay the schedule over (--max-minutes, "
                             "--max-epochs or --max-steps), got none")  # fmt: skip
        for name in ("width", "pools"):
            if getattr(self, name) is not None and self.model != "conv4":
                raise FsmtlError(f"--{name}: only for --model conv4, not {self.model}")
        if self.algorithm != "mtl" and self.train_queries < 1:
            raise FsmtlError(f"--algorithm {self.algorithm}: episodic training needs --train-queries >= 1")
        if not is_device_name(self.device):
            raise FsmtlError(f"--device: expected {DEVICE_NAMES}, got {self.device!r}")
        return self

    def _check_numbers(self) -> None:
        """Every count and real in range (integers up to int64, where they end up; reals finite)."""
        for name in ("train_ways", "test_ways"):
            if getattr(self, name) < 2:
                raise FsmtlError(f"--{name.replace('_', '-')}: expected at least 2 classes a task, got {getattr(self, name)} "
                                 "(a 1-way task has nothing to tell apart)")  # fmt: skip
        lows = {"train_ways": 2, "test_ways": 2, "train_shots": 1, "meta_batch_size": 1, "test_shots": 1,
                "test_queries": 1, "epoch_length": 1, "val_epoch_length": 1, "val_batch_tasks": 1, "log_every": 1,
                "train_queries": 0, "plateau_patience": 0, "step_size": 1, "cosine_epochs": 1,
                "early_stop_patience": 1, "workers": 0, "max_epochs": 1, "max_steps": 1}  # fmt: skip
        for name, lo in lows.items():
            if getattr(self, name) is not None:
                check_int(getattr(self, name), _flag(name), lo, INT64_MAX)
        check_int(self.seed, "--seed", 0, SEED_MAX)
        check_int(self.test_support_views, "--test-support-views", 0, 256)
        if self.width is not None:
            check_int(self.width, "--width", 1, 4096)
        if self.pools is not None:
            check_int(self.pools, "--pools", 0, 4)
        check_real(self.drop_rate, "--drop-rate", 0.0, 1.0, hi_open=True)
        check_real(self.momentum, "--momentum", 0.0, 1.0, hi_open=True)
        check_real(self.plateau_factor, "--plateau-factor", 0.0, 1.0, lo_open=True, hi_open=True)
        for name in ("lr", "step_gamma", "max_minutes", "snapshot_minutes"):
            if getattr(self, name) is not None:
                check_real(getattr(self, name), _flag(name), 0.0, lo_open=True)
        check_real(self.warmup_frac, "--warmup-frac", 0.0, 1.0, hi_open=True)
        for name, hi in WARP_LIMITS:
            check_real(getattr(self, name), _flag(name), 0.0, hi, hi_open=True)
        check_real(self.lr_floor, "--lr-floor", 0.0, 1.0)
        check_real(self.test_C, "--test-C", 0.0, lo_open=True)
        for name in ("grad_clip", "weight_decay"):
            if getattr(self, name) is not None:
                check_real(getattr(self, name), _flag(name), 0.0)

    def validation_split(self) -> str | None:
        """The split validation runs on, ``val_split`` resolved: None for no validation."""
        if self.val_split == "auto":
            return "test" if self.trainval else "val"
        return None if self.val_split == "none" else self.val_split

    def cosine_length(self) -> int:
        """Epochs of the cosine schedule: ``cosine_epochs``, else ``max_epochs``, else 100."""
        return self.cosine_epochs or self.max_epochs or 100

    def steps_per_epoch(self, world_size: int = 1) -> int:
        """Optimizer steps of one epoch: ``epoch_length`` training tasks at ``meta_batch_size`` tasks
        per rank a step, rounded up.

        The seed fed ``epoch_length`` tasks (one task a batch) to a loop that stepped every
        ``meta_batch_size`` batches and once more on the epoch's last, partial accumulation: 1600
        tasks at 6 a step are 267 steps. With several ranks a step takes ``meta_batch_size`` tasks
        on each, so an epoch stays 1600 tasks and the schedule (patience, step size) keeps its
        meaning at any number of GPUs.
        """
        return -(-self.epoch_length // (self.meta_batch_size * max(1, world_size)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Rebuild from ``to_dict()`` output, ignoring keys this version does not know."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def with_overrides(self, **overrides: Any) -> "TrainConfig":
        return dataclasses.replace(self, **overrides)
