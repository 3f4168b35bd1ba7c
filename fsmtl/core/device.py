"""Devices as the user names them: "auto", "cpu", "cuda", "cuda:N" -> a usable ``torch.device``,
with errors that name the argument as the caller spelt it (Python argument or CLI flag)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fsmtl.core.errors import FsmtlError


@dataclass(frozen=True)
class ArgNames:
    """How error messages name the user's inputs: Python argument names, or the CLI's flags."""

    run: str
    checkpoint: str
    device: str
    cli: bool

    def show(self, name: str, value: Any) -> str:
        """``--checkpoint best`` on the command line, ``checkpoint='best'`` in Python."""
        return f"{name} {value}" if self.cli else f"{name}={value!r}"


PYTHON_ARGS = ArgNames(run="path", checkpoint="checkpoint", device="device", cli=False)
CLI_ARGS = ArgNames(run="--run", checkpoint="--checkpoint", device="--device", cli=True)


def pick_device(device: str | torch.device, names: ArgNames = PYTHON_ARGS) -> torch.device:
    """``device`` as a torch.device ("auto": CUDA when available); FsmtlError when it cannot be used."""
    shown = names.show(names.device, str(device))
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise FsmtlError(f"{shown}: expected auto, cpu or cuda[:N]") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FsmtlError(f"{shown}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FsmtlError(f"{shown}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev
