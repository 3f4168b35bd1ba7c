"""The race's "learn2learn alone" line: what a user runs instead of fsmtl, on the same images.

learn2learn's own data path and its example training loop, not fsmtl's pipeline: the official
Omniglot zips are unpacked once (untimed, as fsmtl's conversion is) into one folder per character of
the *training* alphabets of ``--data`` (the same classes fsmtl trains on; the held-out alphabets are
not unpacked); then, as learn2learn's Omniglot benchmark (``vision/benchmarks/omniglot_benchmark.py``)
and its ``examples/vision/maml_omniglot.py`` do it: torchvision ``ImageFolder`` (PIL decode per
image, Resize 28 LANCZOS, ToTensor, 1 - x), ``l2l.data.MetaDataset`` + ``TaskDataset`` with
``FusedNWaysKShots``, ``LoadData``, ``RemapLabels``, ``ConsecutiveLabels`` and
``RandomClassRotation`` (0/90/180/270), sampled one task at a time in the main process; the model
``l2l.vision.models.OmniglotCNN`` (Finn et al.'s Conv-4 for 28x28 Omniglot), ``l2l.algorithms.MAML``
(second order, fast lr 0.5, 1 adaptation step), Adam at 3e-3, 32 tasks of 5-way 1-shot a step (the
example's settings). One change: the example's per-iteration meta-validation forward passes are
left out (evaluation is off the clock for every method in the race).

The clock runs from the first step; every ``--snapshot-minutes`` of training time (saving
excluded) the weights go to ``OUT/snapshots/t<seconds>.pt`` and at the budget's end to
``OUT/final.pt``: ``{"format": "fsmtl-race-l2l", "state_dict", "wall_s", "step", "ways", "hidden",
"size"}``, read back with ``torch.load(weights_only=True)``.

    python -m fsmtl.benchmarks.race_l2l --data D --out O --minutes 10 --snapshot-minutes 1 --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from fsmtl.core.embedded import EMBEDDED_OMNIGLOT
from fsmtl.core.errors import FsmtlError
from fsmtl.core.fileio import atomic_write, load_weights_only

L2L_FORMAT = "fsmtl-race-l2l"
L2L_SIZE = 28  # OmniglotCNN views its input as 28x28


def train_alphabets(data: Path) -> list[str]:
    """The alphabets of ``data``'s train split (its classes are ``Alphabet/characterNN[/rotR]``)."""
    path = data / "train" / "classes.json"
    try:
        classes = json.loads(path.read_text(encoding="utf-8"))["classes"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FsmtlError(f"{path}: expected an Omniglot shard's class list ({e})") from None
    return sorted({str(c).split("/")[0] for c in classes})


def unpack_training_images(zips: list[Path], alphabets: list[str], root: Path) -> int:
    """Unpack ``<set>/<Alphabet>/<character>/*.png`` of ``alphabets`` from ``zips`` into
    ``root/<Alphabet>__<character>/`` (ImageFolder's one folder per class); returns the class count.
    Member names are checked (no absolute paths, no ``..``): only PNG files at that depth are written."""
    keep = set(alphabets)
    for z in zips:
        with zipfile.ZipFile(z) as f:
            for name in f.namelist():
                parts = PurePosixPath(name).parts
                if len(parts) != 4 or not name.lower().endswith(".png") or parts[1] not in keep:
                    continue
                if any(p in ("", ".", "..") or "\\" in p for p in parts):
                    raise FsmtlError(f"{z}: member {name!r} is not a plain relative path")
                dest = root / f"{parts[1]}__{parts[2]}" / parts[3]
                if not dest.exists():  # Greek and Latin are in both zips: the same drawings
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(f.read(name))
    return sum(1 for p in root.iterdir() if p.is_dir())


def l2l_model(ways: int, hidden: int = 64) -> torch.nn.Module:
    """learn2learn's OmniglotCNN; ``.features`` maps [B,1,28,28] float in 0..1 to [B, hidden]."""
    import learn2learn as l2l

    return l2l.vision.models.OmniglotCNN(output_size=ways, hidden_size=hidden)


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def train(a: argparse.Namespace) -> dict:
    import learn2learn as l2l
    from PIL.Image import LANCZOS
    from torchvision import datasets, transforms

    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    root = a.out / "images"
    if not root.is_dir():
        tmp = a.out / "images.partial"
        tmp.mkdir(parents=True, exist_ok=True)
        unpack_training_images(a.zips, train_alphabets(a.data), tmp)
        tmp.rename(root)
    tf = transforms.Compose([transforms.Grayscale(1), transforms.Resize(L2L_SIZE, interpolation=LANCZOS),
                             transforms.ToTensor(), lambda x: 1.0 - x])  # fmt: skip
    images = datasets.ImageFolder(str(root), transform=tf)
    by_label: dict[int, list[int]] = {}
    for i, t in enumerate(images.targets):
        by_label.setdefault(int(t), []).append(i)
    meta = l2l.data.MetaDataset(images, labels_to_indices=by_label)
    task_tf = [l2l.data.transforms.FusedNWaysKShots(meta, n=a.ways, k=2 * a.shots), l2l.data.transforms.LoadData(meta),
               l2l.data.transforms.RemapLabels(meta), l2l.data.transforms.ConsecutiveLabels(meta),
               l2l.vision.transforms.RandomClassRotation(meta, [0.0, 90.0, 180.0, 270.0])]  # fmt: skip
    tasks = l2l.data.TaskDataset(meta, task_transforms=task_tf, num_tasks=-1)
    model = l2l_model(a.ways, a.hidden)
    maml = l2l.algorithms.MAML(model, lr=a.fast_lr, first_order=False)
    opt = torch.optim.Adam(maml.parameters(), a.meta_lr)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="mean")
    snaps = a.out / "snapshots"
    snaps.mkdir(parents=True, exist_ok=True)
    budget, every = 60.0 * a.minutes, 60.0 * a.snapshot_minutes
    next_at, paused, step, t0 = every, 0.0, 0, time.monotonic()
    acc = 0.0

    def save(path: Path, trained: float) -> None:
        record = {"format": L2L_FORMAT, "state_dict": model.state_dict(), "wall_s": trained, "step": step,
                  "ways": a.ways, "hidden": a.hidden, "size": L2L_SIZE}
        atomic_write(path, lambda f: torch.save(record, f))

    while True:
        trained = time.monotonic() - t0 - paused
        if trained >= budget:
            break
        if trained >= next_at:
            s0 = time.monotonic()
            save(snaps / f"t{int(round(trained)):06d}.pt", trained)
            next_at = (int(trained // every) + 1) * every
            paused += time.monotonic() - s0
        opt.zero_grad()
        acc = 0.0
        for _ in range(a.meta_batch_size):
            x, y = tasks.sample()
            learner = maml.clone()
            adapt = np.zeros(x.size(0), dtype=bool)
            adapt[np.arange(a.shots * a.ways) * 2] = True  # the example's alternate split
            ad, ev = torch.from_numpy(adapt), torch.from_numpy(~adapt)
            for _ in range(a.adaptation_steps):
                learner.adapt(loss_fn(learner(x[ad]), y[ad]))
            logits = learner(x[ev])
            loss_fn(logits, y[ev]).backward()
            acc += _accuracy(logits.detach(), y[ev]) / a.meta_batch_size
        for p in maml.parameters():
            p.grad.data.mul_(1.0 / a.meta_batch_size)
        opt.step()
        step += 1
        if step % 25 == 0:
            print(f"  l2l step {step}: train query accuracy {100 * acc:.1f}% at {trained:.0f} s", flush=True)
    trained = time.monotonic() - t0 - paused
    save(a.out / "final.pt", trained)
    return {"steps": step, "wall_s": trained, "last_train_acc": acc}


def load_l2l_features(path: Path) -> tuple[torch.nn.Module, dict]:
    """The frozen feature extractor of an ``fsmtl-race-l2l`` file: float [B,1,H,W] in 0..1 -> [B, hidden],
    images resized to 28x28 first (antialiased bilinear); and the file's record without weights."""
    ck = load_weights_only(path)
    if not isinstance(ck, dict) or ck.get("format") != L2L_FORMAT:
        raise FsmtlError(f"{path}: not a race learn2learn snapshot (format {ck.get('format')!r})")
    model = l2l_model(int(ck["ways"]), int(ck["hidden"]))
    model.load_state_dict(ck["state_dict"])
    feats = _Resized(model.features, int(ck["size"])).eval().requires_grad_(False)
    return feats, {k: v for k, v in ck.items() if k != "state_dict"}


class _Resized(torch.nn.Module):
    def __init__(self, features: torch.nn.Module, size: int) -> None:
        super().__init__()
        self.features, self.size = features, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = torch.nn.functional.interpolate(x.float(), size=(self.size, self.size), mode="bilinear",
                                                antialias=True, align_corners=False)  # fmt: skip
        return self.features(x)


def parse_args(argv: list[str]) -> argparse.Namespace:
    from fsmtl.core.cli import CliParser, plain_doc

    p = CliParser(prog="python -m fsmtl.benchmarks.race_l2l", description=plain_doc(__doc__),
                  formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--data", type=Path, required=True, help="fsmtl Omniglot shards: their train alphabets are trained on")
    p.add_argument("--zips", type=Path, nargs="+", default=None, help="the official zips (default: the embedded ones)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--snapshot-minutes", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--meta-batch-size", type=int, default=32)
    p.add_argument("--adaptation-steps", type=int, default=1)
    p.add_argument("--fast-lr", type=float, default=0.5)
    p.add_argument("--meta-lr", type=float, default=3e-3)
    p.add_argument("--hidden", type=int, default=64)
    a = p.parse_args(argv)
    if not (a.minutes > 0 and a.snapshot_minutes > 0):
        raise FsmtlError("race_l2l: expected --minutes > 0 and --snapshot-minutes > 0")
    if a.zips is None:
        from fsmtl.core.embedded import check_embedded_omniglot

        a.zips = check_embedded_omniglot(EMBEDDED_OMNIGLOT)
    return a


def main(argv: list[str] | None = None) -> int:
    from fsmtl.train.meta_baselines import import_l2l

    import_l2l()  # the install hint, before anything is unpacked
    a = parse_args(list(sys.argv[1:] if argv is None else argv))
    a.out.mkdir(parents=True, exist_ok=True)
    info = train(a)
    print(f"l2l: {info['steps']} steps in {info['wall_s']:.0f} s -> {a.out / 'final.pt'}", flush=True)
    return 0


if __name__ == "__main__":
    from fsmtl.core.cli import run_stage_main

    sys.exit(run_stage_main(main, sys.argv[1:]))
