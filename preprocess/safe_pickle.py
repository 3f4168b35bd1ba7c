"""A restricted unpickler for the benchmark files users already have (CIFAR, MetaOptNet, RFS...).

A pickle is a program: ``pickle.load`` on a downloaded file can run any command. This unpickler
resolves only the handful of globals needed to rebuild plain containers, strings, bytes, numbers
and numpy arrays/scalars/dtypes, and refuses everything else, so a malicious file fails with an
error instead of running code.

Python-2 era pickles (the CIFAR-100 python version, MetaOptNet's pickles) store byte strings as
py2 ``str``; they are read with ``encoding="latin1"``, which numpy needs to rebuild arrays and
which turns py2 ``str`` keys such as ``'data'`` into ``str``. Files written by Python 3 with bytes
keys (``b'data'``) keep them as ``bytes``: use :func:`get_key` to accept either.
"""

from __future__ import annotations

import codecs
import os
import pickle
from pathlib import Path
from typing import IO, Any, Callable

from fsmtl.core.errors import FsmtlError


def _latin1_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of ``bytes`` use it, limited to text codecs."""
    if not isinstance(obj, str) or codecs.lookup(encoding).name not in (
        "latin-1",
        "iso8859-1",
        "utf-8",
    ):
        raise pickle.UnpicklingError(f"refusing _codecs.encode({type(obj).__name__}, {encoding!r})")
    return obj.encode(encoding, errors)


def _numpy_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    """The numpy functions/types an array, scalar or dtype pickle references (numpy 1 and 2)."""
    import numpy as np

    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]

    allowed: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = multiarray._reconstruct
        allowed[(mod, "scalar")] = multiarray.scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        # protocol-5 pickles rebuild contiguous arrays from an (in-band) buffer
        allowed[(mod, "_frombuffer")] = numeric._frombuffer
    return allowed


def _bytearray(*args: Any) -> bytearray:
    """``bytearray`` of given bytes or text only: ``bytearray(10**10)`` would allocate 10 GB
    from a pickle of a few bytes."""
    if args and not isinstance(args[0], (bytes, bytearray, str)):
        raise pickle.UnpicklingError(f"refusing bytearray({type(args[0]).__name__}) (only from bytes or text)")
    return bytearray(*args)


def _builtin_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    allowed: dict[tuple[str, str], Callable[..., Any]] = {("_codecs", "encode"): _latin1_encode}
    for mod in ("builtins", "__builtin__"):  # __builtin__: Python-2 pickles
        for name, fn in (
            ("set", set),
            ("frozenset", frozenset),
            ("bytearray", _bytearray),
            ("complex", complex),
        ):
            allowed[(mod, name)] = fn
    allowed[("collections", "OrderedDict")] = dict
    return allowed


MAX_OBJECTS = 20_000_000  # objects a data pickle may build: its arrays come whole, as one object each


class TooLarge(pickle.UnpicklingError):
    """The pickle builds more objects than any benchmark file holds (see :data:`MAX_OBJECTS`)."""


def _counted(fn: Callable[..., Any]) -> Callable[..., Any]:
    def step(self: "RestrictedUnpickler") -> Any:
        self.objects += 1
        if self.objects > self.max_objects:
            raise TooLarge(f"more than {self.max_objects:,} objects (a benchmark file holds its images as one array, "
                           "not as nested lists)")  # fmt: skip
        return fn(self)

    return step


class RestrictedUnpickler(pickle._Unpickler):  # the Python unpickler: each opcode can be counted
    """An unpickler that admits only plain data and numpy arrays, and at most ``max_objects``
    pickle operations (one per object built or container element added): a file whose nested
    lists would grow to gigabytes is refused early, at a few hundred MB at most."""

    dispatch = {op: _counted(fn) for op, fn in pickle._Unpickler.dispatch.items()}

    def __init__(self, file: IO[bytes], encoding: str = "latin1", max_objects: int = MAX_OBJECTS) -> None:
        super().__init__(file, encoding=encoding, errors="strict")
        self._allowed = {**_builtin_globals(), **_numpy_globals()}
        self.objects = 0
        self.max_objects = max_objects

    def find_class(self, module: str, name: str) -> Any:
        fn = self._allowed.get((module, name))
        if fn is None:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name} (only plain data and numpy arrays "
                "are allowed)"
            )
        return fn

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing persistent ids")


def load_pickle_stream(f: IO[bytes], name: str, what: str, encoding: str = "latin1", max_objects: int = MAX_OBJECTS) -> Any:
    """Unpickle plain data from an open binary stream; errors name ``name`` and ``what``.

    Args:
        f: a binary file object.
        name: how to name the source in errors (a path, or ``archive.tar.gz:member``).
        what: what the file should hold, e.g. ``"a CIFAR-100 batch (dict with 'data')"``.
        encoding: how to decode Python-2 ``str`` objects ("latin1" or "bytes").
        max_objects: refuse a pickle that builds more objects than this.
    """
    try:
        return RestrictedUnpickler(f, encoding=encoding, max_objects=max_objects).load()
    except TooLarge as e:
        raise FsmtlError(f"{name}: refused: the pickle builds {e}; expected {what}") from None
    except pickle.UnpicklingError as e:
        if "truncated" in str(e) or "exhausted" in str(e):  # the C and the Python unpickler's words
            raise FsmtlError(f"{name}: truncated pickle; expected {what}") from None
        if str(e).startswith("refusing"):
            raise FsmtlError(f"{name}: not a safe data pickle ({e}); expected {what}") from None
        raise FsmtlError(f"{name}: corrupt pickle ({e}); expected {what}") from None
    except EOFError:
        raise FsmtlError(f"{name}: truncated pickle; expected {what}") from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - any other decoding failure is a corrupt file
        raise FsmtlError(
            f"{name}: corrupt pickle ({type(e).__name__}: {e}); expected {what}"
        ) from None


def load_pickle(path: str | os.PathLike[str], what: str, encoding: str = "latin1", max_objects: int = MAX_OBJECTS) -> Any:
    """Unpickle a user file with :class:`RestrictedUnpickler` (never runs code from the file).

    Raises:
        FsmtlError: naming the file, if it is missing, truncated, corrupt or references a
            global outside the allow-list.
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise FsmtlError(f"{path}: file not found; expected {what}") from None
    except OSError as e:
        raise FsmtlError(f"{path}: cannot read ({e.strerror}); expected {what}") from None
    with f:
        return load_pickle_stream(f, str(path), what, encoding, max_objects)


def get_key(d: Any, key: str, name: str, what: str) -> Any:
    """``d[key]`` where the pickle may hold the key as ``str`` or ``bytes`` (Python 2 vs 3).

    Raises:
        FsmtlError: ``"<name>: expected <what> with key '<key>'"`` when it is not a dict or lacks
            the key.
    """
    if isinstance(d, dict):
        if key in d:
            return d[key]
        bkey = key.encode("ascii")
        if bkey in d:
            return d[bkey]
    found = sorted(str(k) for k in d)[:8] if isinstance(d, dict) else type(d).__name__
    raise FsmtlError(f"{name}: expected {what} with key {key!r}, got {found}")
