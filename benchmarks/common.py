"""What every benchmark shares: honest timing, the machine's description, table + JSON output."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from fsmtl.core.device import CLI_ARGS, resolve_device
from fsmtl.core.errors import FsmtlError
from fsmtl.core.fileio import atomic_write_json


def synchronize(device: torch.device | str) -> None:
    """Wait for queued device work, so host clocks measure it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(
    fn: Callable[[], Any], device: torch.device | str = "cpu", warmup: int = 2, runs: int = 5
) -> list[float]:
    """Seconds per call of ``fn``: ``warmup`` untimed calls, then ``runs`` timed ones.

    Each timed call is bracketed by a device synchronize, so asynchronous work is counted.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        out.append(time.perf_counter() - t0)
    return out


def time_windows(
    fn: Callable[[], Any], device: torch.device | str = "cpu", warmup: int = 2, runs: int = 5
) -> list[float]:
    """Seconds of ``runs`` back-to-back windows of one ``fn`` call each, after ``warmup`` calls.

    For producers with a prefetch buffer (loaders): the windows follow one another without a gap
    (each ends with a synchronize), so no window gets batches made for free while the timer was
    stopped, as separately timed calls would.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    out = []
    t_prev = time.perf_counter()
    for _ in range(runs):
        fn()
        synchronize(device)
        t = time.perf_counter()
        out.append(t - t_prev)
        t_prev = t
    return out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """The machine and library versions, recorded beside every benchmark's numbers."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    # Read versions from package metadata: importing ffcv would set torch and numba to one
    # thread for the whole process, and its __version__ is wrong (1.0.2 says 0.0.3rc1).
    from importlib.metadata import PackageNotFoundError, version

    dists = {"numpy": "numpy", "numba": "numba", "sklearn": "scikit-learn", "torchvision": "torchvision",
             "nvidia.dali": "nvidia-dali-cuda130", "ffcv": "ffcv", "learn2learn": "learn2learn"}
    for key, dist in dists.items():
        try:
            info[key] = version(dist)
        except PackageNotFoundError:
            info[key] = None
    return info


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text table of ``rows`` (dicts): floats with 4 significant digits, from 1,000 up as whole numbers with separators."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def fmt(v: Any) -> str:
        if isinstance(v, float):  # 4 significant digits, never in exponent form for large values
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join([line, sep, *body])


def write_results(path: str | os.PathLike[str] | None, name: str, config: dict[str, Any], rows: list[dict[str, Any]], device: torch.device | str = "cpu", **extra: Any) -> dict[str, Any]:
    """Build the benchmark's JSON document (name, config, hardware, rows) and write it if asked."""
    doc = {"benchmark": name, "config": config, "hardware": hardware_info(device), "rows": rows, **extra}
    if path is not None:
        write_json(path, doc)
    return doc


def write_json(path: str | os.PathLike[str], doc: Any, flag: str = "--json") -> None:
    """Atomically write ``doc`` to ``path``; a failure names ``path`` (not the hidden temporary file)."""
    try:
        atomic_write_json(path, doc)
    except OSError as e:
        raise FsmtlError(f"{flag} {path}: cannot be written ({e.strerror or e})") from None


def check_writable(path: str | os.PathLike[str] | None, flag: str = "--json") -> None:
    """Fail now, not after minutes of measuring, if the results file ``path`` cannot be written.

    Creates missing parent folders (as the final write would) and writes and removes a probe file
    beside ``path``. Raises FsmtlError naming ``flag`` and the path as given."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise FsmtlError(f"{flag} {path}: is a directory (expected the path of a file to write)")
    _probe_folder(path.parent, f"{flag} {path}", path.name)


def check_writable_dir(path: str | os.PathLike[str], flag: str = "--out") -> None:
    """Fail now if the output folder ``path`` cannot be created or written (see :func:`check_writable`)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FsmtlError(f"{flag} {path}: is a file (expected a folder)")
    _probe_folder(path, f"{flag} {path}", "out")


def _probe_folder(folder: Path, what: str, name: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{name}.", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise FsmtlError(f"{what}: cannot write there ({e.strerror or e}); expected a writable folder") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count of tasks, runs, images ...)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0 (warm-up runs, queries ...)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value



def image_sizes(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated image sides >= 8 (``84,32``), duplicates dropped, order kept."""
    parts = [t.strip() for t in text.split(",")]
    try:
        sizes = [int(t) for t in parts]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 8:
        raise argparse.ArgumentTypeError(f"expected comma-separated image sides >= 8 such as 84,32, got {text!r}")
    return tuple(dict.fromkeys(sizes))


def device_name(text: str) -> str:
    """argparse type: a device that :func:`fsmtl.core.device.resolve_device` can use here (kept as text)."""
    try:
        resolve_device(text, CLI_ARGS)
    except FsmtlError as e:
        why = str(e).removeprefix(f"--device {text}: ")
        raise argparse.ArgumentTypeError(f"{why}, got {text!r}" if why.startswith("expected") else f"{text}: {why} (use cpu or auto)") from None
    return text


def parse_names(flag: str, text: str, choices: Sequence[str]) -> list[str]:
    """A comma-separated selection (``--backends torch,dali``): at least one known name, each once."""
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in choices]
    if unknown:
        raise FsmtlError(f"{flag}: unknown {unknown}; choose from {', '.join(choices)}")
    if not names:
        raise FsmtlError(f"{flag}: empty selection; expected one or more of {', '.join(choices)}")
    return names
