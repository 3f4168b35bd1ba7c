"""The one exception type that reaches the user as a one-line message and exit code 2."""

from __future__ import annotations

EXIT_USER_ERROR = 2


class FsmtlError(Exception):
    """A problem with the user's input or configuration.

    The message must name the file or setting at fault and what was expected, e.g.
    ``"/data/mini/meta.json: expected format version 1, got 3"``. The CLI prints it as one line
    (no traceback) and exits with code 2.
    """
