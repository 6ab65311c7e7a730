"""Solver statistics of the last solve: function evaluations and steps, forward and backward."""

from __future__ import annotations

from dataclasses import dataclass, field

from nodecore.numerics.stats import StepCounts as _PhaseCounts


@dataclass(frozen=True)
class SolveStats:
    """Counts for one ``NeuralODE`` forward pass and, once run, its backward pass.

    Backward counts stay 0 in ``autograd`` mode: backpropagation through the solver's operations does not
    evaluate the field again. In ``adjoint`` mode they count the backward (adjoint) solve.
    """

    nfe_forward: int = 0
    nfe_backward: int = 0
    steps_forward: int = 0
    rejected_forward: int = 0
    steps_backward: int = 0
    rejected_backward: int = 0


@dataclass
class StepCounter:
    """Live counters a solve writes into; :meth:`snapshot` turns them into :class:`SolveStats`."""

    forward: _PhaseCounts = field(default_factory=_PhaseCounts)
    backward: _PhaseCounts = field(default_factory=_PhaseCounts)

    def snapshot(self) -> SolveStats:
        return SolveStats(
            nfe_forward=self.forward.nfe,
            nfe_backward=self.backward.nfe,
            steps_forward=self.forward.steps,
            rejected_forward=self.forward.rejected,
            steps_backward=self.backward.steps,
            rejected_backward=self.backward.rejected,
        )
