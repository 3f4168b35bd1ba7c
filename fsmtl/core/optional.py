"""Optional extras, imported in one place: learn2learn, FFCV, DALI, numba, Triton, and fsmtl's own
modules that need one of them.

Two of them misbehave at import, which is handled here once: learn2learn (through gym) prints an
"unmaintained" notice on every import, and FFCV sets torch's and numba's thread counts to 1 as a
side effect (which would silently serialise every numba kernel and torch CPU op afterwards).
"""

from __future__ import annotations

import contextlib
import importlib
import io
from types import ModuleType
from typing import Iterator

_SUBMODULES = {"ffcv": ("ffcv.fields", "ffcv.loader", "ffcv.writer")}  # imported with the package


@contextlib.contextmanager
def keep_thread_counts() -> Iterator[None]:
    """Restore torch's and numba's thread counts on exit (FFCV sets both as a side effect)."""
    import numba
    import torch

    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        numba.set_num_threads(numba_threads)


def import_optional(name: str) -> ModuleType:
    """Import the optional module ``name``, its chatter on stdout/stderr swallowed.

    Raises:
        ImportError: it is missing, or it is broken (a native library that fails to load raises
            anything: that error is given as the ImportError's message, ``Type: message``).
    """
    threads = keep_thread_counts() if name.split(".")[0] == "ffcv" else contextlib.nullcontext()
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()), threads:
            module = importlib.import_module(name)
            for sub in _SUBMODULES.get(name, ()):
                importlib.import_module(sub)
    except ImportError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken native library raises anything
        raise ImportError(f"{type(e).__name__}: {e}") from e
    return module


def optional_problem(name: str) -> str | None:
    """None when :func:`import_optional` can import ``name``, else why not (``Type: message``)."""
    try:
        import_optional(name)
    except ImportError as e:
        return f"{type(e).__name__}: {e}"
    return None
