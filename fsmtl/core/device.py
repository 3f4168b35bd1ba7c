"""Devices as the user names them: "auto", "cpu", "cuda", "cuda:N" -> a usable ``torch.device``,
with errors that name the argument as the caller spelt it (Python argument or CLI flag)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import torch

from fsmtl.core.checks import InputError
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


DEVICE_NAMES = "auto, cpu, cuda or cuda:N"  # what resolve_device takes, as messages say it


def resolve_device(device: str | torch.device, names: ArgNames = PYTHON_ARGS, local_rank: int = 0) -> torch.device:
    """``device`` as a usable ``torch.device``, decided once and passed down as the object.

    "auto" is ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; "cuda" without an index
    is ``cuda:<local_rank>`` (``local_rank``: torchrun's, 0 in a plain run). FsmtlError, naming the
    argument as ``names`` spells it, when it is malformed or cannot be used here.
    """
    shown = names.show(names.device, str(device))
    if str(device) == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise FsmtlError(f"{shown}: expected {DEVICE_NAMES}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FsmtlError(f"{shown}: CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
        if dev.index >= torch.cuda.device_count():
            raise FsmtlError(f"{shown}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}  # precision name -> autocast dtype


def cpu_bf16_supported() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 / AMX), by oneDNN's probe."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - an older build without the probe: assume not
        return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None: float32, no autocast).

    "auto" is bf16 on a CUDA device with bf16 and on a CPU with native bf16, else float32.
    FsmtlError for an unknown name, and for fp16 off CUDA (float16 without a grad scaler's
    device support; callers that can fall back to fp32 decide so before calling).
    """
    if precision == "auto":
        ok = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_bf16_supported()
        return torch.bfloat16 if ok else None
    if precision not in AUTOCAST:
        raise FsmtlError(f"precision: expected one of auto, {', '.join(AUTOCAST)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise FsmtlError("--precision fp16: float16 training needs a CUDA device; use bf16 or fp32 on CPU")
    return AUTOCAST[precision]


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """The --precision spelling of an autocast dtype: bf16, fp16, or fp32 for None."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype, "fp32") if amp_dtype else "fp32"


def cpu_workers(workers: int | None) -> int:
    """CPU workers or threads to use: ``workers`` as given, or every core when None."""
    return int(workers) if workers is not None else (os.cpu_count() or 1)


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask, bounded by a cgroup v2 CPU quota
    (``/sys/fs/cgroup/cpu.max``, rounded up) when one is set; at least 1."""
    import math

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max", encoding="ascii").read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def is_device_name(text: object) -> bool:
    """``text`` is a device as the user may name one: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``
    (syntax only: whether the machine has it is :func:`resolve_device`'s question)."""
    return isinstance(text, str) and re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", text) is not None


def check_fits(name: str, what: str, nbytes: int, device: str) -> None:
    """Refuse a request whose one allocation of ``nbytes`` is larger than the memory of ``device``
    (the GPU's total memory for ``cuda``/``auto`` with CUDA, else this machine's physical RAM):
    :class:`InputError` naming ``name``, the size and the bound."""
    limit, where = memory_bound(device)
    if nbytes > limit:
        raise InputError(f"{name}: {what} take {nbytes / 2**30:,.1f} GiB, more than {where}'s "
                         f"{limit / 2**30:,.1f} GiB of memory")  # fmt: skip


def memory_bound(device: str) -> tuple[int, str]:
    """(bytes, name) of the memory one allocation on ``device`` can at most have: the CUDA device's
    total memory, else physical RAM (``auto``: CUDA when available)."""
    import torch

    if device != "cpu" and torch.cuda.is_available() and is_device_name(device):
        index = int(device.split(":")[1]) if ":" in device else 0
        if index < torch.cuda.device_count():
            return int(torch.cuda.get_device_properties(index).total_memory), f"cuda:{index}"
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "this machine"
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): 1 TiB, a bound no box exceeds
        return 2**40, "a 1 TiB machine"
