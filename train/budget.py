"""Schedules laid over a run's budget: how much of it is spent, and the learning-rate factor there.

A run bounded by ``--max-minutes``, ``--max-epochs`` or ``--max-steps`` knows when it will end; the
``budget`` scheduler sets the learning rate every step from the fraction of that budget spent (the
largest over the budgets given), so that a 10-minute run ends annealed whatever its step rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ONE_CYCLE_START = 0.04  # warm-up starts at lr/25, one-cycle's usual div_factor


@dataclass(frozen=True)
class Budget:
    """The budgets that bound a run (None: not bounded by it)."""

    max_steps: int | None
    max_epochs: int | None
    max_seconds: float | None  # of this invocation (--max-minutes counts anew on --resume)
    steps_per_epoch: int

    @property
    def bounded(self) -> bool:
        return any(v is not None for v in (self.max_steps, self.max_epochs, self.max_seconds))

    def fraction(self, step: int, elapsed_s: float, start: float = 0.0) -> float:
        """Fraction in [0, 1] of the budget spent after ``step`` optimizer steps (all invocations)
        and ``elapsed_s`` seconds of this invocation, which started at fraction ``start``.

        The time budget covers what was left at the start: ``start + (1 - start) * elapsed / max``,
        so a resumed run's schedule goes on from where it stopped, never back up.
        """
        parts = []
        if self.max_steps is not None:
            parts.append(step / self.max_steps)
        if self.max_epochs is not None:
            parts.append(step / (self.max_epochs * self.steps_per_epoch))
        if self.max_seconds is not None:
            parts.append(start + (1.0 - start) * elapsed_s / self.max_seconds)
        return min(1.0, max(0.0, start, *parts)) if parts else start


def budget_factor(frac: float, warmup: float = 0.0, floor: float = 0.0) -> float:
    """The learning-rate factor at ``frac`` of the budget.

    A linear warm-up from :data:`ONE_CYCLE_START` to 1 over the first ``warmup`` of the budget (0:
    none), then a half cosine from 1 down to ``floor`` at the budget's end (one-cycle when
    ``warmup`` > 0, cosine annealing otherwise). ``frac`` is clamped to [0, 1].
    """
    frac = min(1.0, max(0.0, frac))
    if frac < warmup:
        return ONE_CYCLE_START + (1.0 - ONE_CYCLE_START) * frac / warmup
    t = (frac - warmup) / (1.0 - warmup) if warmup < 1.0 else 1.0
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
