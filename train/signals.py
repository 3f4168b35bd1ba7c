"""Graceful stops: SIGTERM (a cluster scheduler's preemption notice) and a first Ctrl-C end the run
at the next host sync with a validated checkpoint, so ``fsmtl train --resume RUN`` continues it."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any


class StopRequest:
    """While entered (in the main thread), SIGTERM and SIGINT set :attr:`signal_name` instead of
    killing the process; the trainer polls :attr:`requested` every ``--log-every`` steps, cuts the
    epoch short, validates and writes ``last.pt``. A second Ctrl-C raises KeyboardInterrupt at once.
    Outside the main thread (signals cannot be caught there) it does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        print(f"\nfsmtl train: {self.signal_name} received: ending this epoch early with a validated checkpoint "
              "(Ctrl-C again aborts without one)", file=sys.stderr, flush=True)  # fmt: skip

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
