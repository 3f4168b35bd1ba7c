"""Graceful stops: SIGTERM (a cluster scheduler's preemption notice) and a first Ctrl-C end the run
at the next host sync with a checkpoint of the unfinished epoch, which ``fsmtl train --resume RUN``
finishes exactly as if the run had never stopped."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any


class StopRequest:
    """While entered (in the main thread), SIGTERM and SIGINT set :attr:`signal_name` instead of
    killing the process; the trainer polls :attr:`requested` every ``--log-every`` steps and writes
    ``last.pt`` mid-epoch. A second Ctrl-C raises KeyboardInterrupt at once.
    Outside the main thread (signals cannot be caught there) it does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, announce: bool = True) -> None:
        self.announce = announce  # under torchrun only rank 0 says it
        self._announced = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name  # only a flag here: printing could re-enter stderr

    def announce_once(self) -> None:
        """Say, once, that a stop was requested (called from the loop, not the handler)."""
        if self.requested and self.announce and not self._announced:
            self._announced = True
            print(f"\nfsmtl train: {self.signal_name} received: stopping at this sync with a checkpoint "
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
