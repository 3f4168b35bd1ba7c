"""The layout of one training step's batch, shared by every training objective."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepShape:
    """How one step's batch is laid out: T tasks x ways x (shots + queries) images."""

    n_tasks: int
    ways: int
    shots: int
    queries: int
    norm: bool  # L2-normalise features during training

    @property
    def per_class(self) -> int:
        return self.shots + self.queries
