"""Quiet imports of optional extras."""

from __future__ import annotations

import contextlib
import io
from types import ModuleType


def import_learn2learn() -> ModuleType:
    """``learn2learn`` (an optional extra); raises ImportError when it is missing or broken.

    learn2learn imports gym, which prints an "unmaintained" notice to stderr on every import:
    it is swallowed here so it does not bury fsmtl's own output.
    """
    with contextlib.redirect_stderr(io.StringIO()):
        import learn2learn
    return learn2learn
