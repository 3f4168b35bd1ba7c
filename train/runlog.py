"""Run records: ``RUN/config.json``, ``RUN/metrics.jsonl`` (one line per epoch) and wandb.

Only rank 0 creates a :class:`RunLog` that writes; other ranks get one with ``enabled=False``.
"""

from __future__ import annotations

import json
import os
import re
import resource
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from fsmtl.core.errors import FsmtlError
from fsmtl.core.fileio import append_line, atomic_write, atomic_write_json


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA ``max_memory_allocated`` on a GPU, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def reset_peak_memory(device: torch.device) -> None:
    """Start ``device``'s CUDA peak-memory counter afresh (free cached blocks first); no-op on CPU.

    CUDA is initialised first: on a process's first CUDA call the allocator has no per-device
    stats yet, and ``reset_peak_memory_stats`` fails with "Invalid device argument" (seen on an
    H200 when ``fsmtl bench train`` measured memory before anything else touched the GPU).
    """
    if device.type != "cuda":
        return
    torch.cuda.init()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """The epoch records of a run's ``metrics.jsonl``."""
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:  # only a last line cut off by a crash is dropped
                raise FsmtlError(f"{path}:{i + 1}: not valid JSON") from None
    return rows


class RunLog:
    """Writes a run's records; wandb is started lazily in :meth:`start`, in ``cfg.wandb`` mode."""

    def __init__(self, run: Path, enabled: bool) -> None:
        self.run = Path(run)
        self.enabled = enabled
        self._wandb = None
        self._run_id: str | None = None

    @property
    def _run_id_file(self) -> Path:
        return self.run / "wandb" / "fsmtl_run_id.txt"

    def _wandb_dirs(self, run_id: str) -> list[Path]:
        """The wandb folders of one wandb run id under RUN/wandb (offline-run-<time>-<id>[-n], run-...)."""
        name = re.compile(rf"(?:offline-)?run-\d{{8}}_\d{{6}}-{re.escape(run_id)}(?:-\d+)?")
        return [d for d in (self.run / "wandb").iterdir() if d.is_dir() and name.fullmatch(d.name)] if (self.run / "wandb").is_dir() else []

    def start(self, config: dict[str, Any], wandb_mode: str, resume_epoch: int | None) -> None:
        """Write config.json; on resume keep only metrics of epochs up to the checkpoint's."""
        if not self.enabled:
            return
        self.run.mkdir(parents=True, exist_ok=True)
        old_id = self._run_id_file.read_text().strip() if self._run_id_file.is_file() else None
        if wandb_mode != "disabled":  # first: a wandb that cannot start leaves the old run as it was
            self._start_wandb(config, wandb_mode, resume_epoch is not None)
        if resume_epoch is None:  # a new run (build_run refused an --out holding one unless --overwrite)
            from fsmtl.train.checkpoint import previous_run_files

            for old in previous_run_files(self.run):
                old.unlink()
            if config.get("overwrite") and old_id and old_id != self._run_id:  # the old run's wandb runs, only
                for d in self._wandb_dirs(old_id):
                    shutil.rmtree(d, ignore_errors=True)
        atomic_write_json(self.run / "config.json", config)
        metrics = self.run / "metrics.jsonl"
        if resume_epoch is not None:
            kept = [r for r in read_metrics(self.run) if r.get("epoch", 0) <= resume_epoch]
            text = "".join(json.dumps(r) + "\n" for r in kept).encode()
            atomic_write(metrics, lambda f: f.write(text))

    def _start_wandb(self, config: dict[str, Any], mode: str, resuming: bool) -> None:
        try:
            import wandb
        except ImportError as e:
            raise FsmtlError(f"--wandb {mode}: wandb is not importable ({e}); use --wandb disabled") from None
        os.environ.setdefault("WANDB_SILENT", "true")
        # one wandb run per training run: a resume continues the id the run started with
        id_file = self._run_id_file
        run_id = id_file.read_text().strip() if resuming and id_file.is_file() else secrets.token_hex(4)
        try:
            self._wandb = wandb.init(
                mode=mode, dir=str(self.run), project="fsmtl", config=config,
                name=self.run.name, reinit="finish_previous", id=run_id, resume="allow",
            )  # fmt: skip
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(run_id + "\n")
            self._run_id = run_id
        except Exception as e:  # noqa: BLE001 - no API key, no network, a bad WANDB_* setting
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            hint = "use --wandb offline (no account needed) or run 'wandb login'" if mode == "online" else "use --wandb disabled"
            raise FsmtlError(f"--wandb {mode}: wandb could not start ({first}); {hint}") from None

    def epoch(self, record: dict[str, Any]) -> None:
        """Append one epoch's record (and send it to wandb)."""
        if not self.enabled:
            return
        append_line(self.run / "metrics.jsonl", json.dumps(record))
        if self._wandb is not None:
            self._wandb.log(record, step=int(record["step"]))

    def message(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
