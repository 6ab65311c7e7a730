"""Counts one solve writes as it runs: field evaluations, step attempts and rejected steps."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StepCounts:
    """Live counters of one solve (or one phase of it: forward or backward).

    Attributes:
        nfe: field evaluations.
        attempts: steps tried (accepted + rejected).
        rejected: steps the error control refused.
    """

    nfe: int = 0
    attempts: int = 0
    rejected: int = 0

    @property
    def steps(self) -> int:
        """Accepted steps."""
        return self.attempts - self.rejected

    @property
    def accepted(self) -> int:
        return self.steps
