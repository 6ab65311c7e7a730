"""A solve reads tensor values on the host once per step attempt (the error ratio accept/reject needs), plus a
constant per solve: more steps and more output points add no reads.

On a GPU every such read is a host–device sync, so this is the CPU-side guard of the engine's sync budget
(``tests/nodecore/test_cuda.py`` counts the syncs themselves, including copies from host memory, on a GPU). Reads
are counted by wrapping the ``Tensor`` methods that hand a value to Python.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from nodecore import NeuralODE

_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Counter:
    counted: Counter = Counter()
    for name in _READS:
        method = getattr(torch.Tensor, name)

        def wrapper(self, *args, _method=method, _name=name, **kwargs):
            counted[_name] += 1
            return _method(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return counted


class _Timed(nn.Module):
    """A field that reads its time argument, so the solver builds stage times."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):  # the same weights every time, the global RNG left as it was
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return 3 * self.net(x) * torch.cos(t)


def _x() -> torch.Tensor:
    return torch.randn(64, 2, generator=torch.Generator().manual_seed(0))


def _counted(reads: Counter, model: NeuralODE, t_span: torch.Tensor, grad: bool, backward: bool = False) -> int:
    x = _x()
    with torch.set_grad_enabled(grad or backward):
        output = model(x, t_span)[1]  # a warm-up: first-call checks read values once
        if backward:
            output.pow(2).sum().backward()
        if backward:
            loss = model(x, t_span)[1].pow(2).sum()
            reads.clear()
            loss.backward()
        else:
            reads.clear()
            model(x, t_span)
    return sum(reads.values())


@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "autograd"])
@pytest.mark.parametrize("solver, interpolator", [("dopri5", "dense"), ("dopri5", "step"), ("tsit5", "dense"),
                                                  ("dopri8", "dense"), ("bosh3", "step")])
def test_an_adaptive_solve_reads_once_per_step_attempt(reads, solver, interpolator, grad):
    extra, attempts = {}, {}
    for tolerance, points in ((1e-3, 5), (1e-3, 41), (1e-7, 5), (1e-7, 41)):
        model = NeuralODE(_Timed(), solver=solver, atol=tolerance, rtol=tolerance, interpolator=interpolator)
        n = _counted(reads, model, torch.linspace(0, 6, points), grad)
        attempts[tolerance, points] = model.stats.steps_forward + model.stats.rejected_forward
        extra[tolerance, points] = n - attempts[tolerance, points]
    assert attempts[1e-7, 41] > 2 * attempts[1e-3, 5], attempts  # the tight solve really steps more
    assert len(set(extra.values())) == 1, (extra, attempts)  # a constant per solve
    assert 0 <= extra[1e-3, 5] <= 4, extra


@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "autograd"])
@pytest.mark.parametrize("solver", ["euler", "rk4", "dopri5"])
def test_a_constant_step_solve_reads_a_constant_number_of_times(reads, solver, grad):
    counts = [_counted(reads, NeuralODE(_Timed(), solver=solver, step_size=step), torch.linspace(0, 1, 5), grad)
              for step in (0.1, 0.01)]
    assert counts[0] == counts[1] and counts[0] <= 4, counts  # ten times the steps, no more reads


def test_the_adjoint_backward_solve_reads_once_per_step_attempt_plus_a_constant_per_interval(reads):
    t_span = torch.linspace(0, 6, 3)
    extra, steps = [], []
    for tolerance in (1e-3, 1e-8):
        model = NeuralODE(_Timed(), solver="dopri5", sensitivity="adjoint", atol=tolerance, rtol=tolerance,
                          atol_adjoint=tolerance, rtol_adjoint=tolerance, interpolator="dense")
        n = _counted(reads, model, t_span, grad=True, backward=True)
        steps.append(model.stats.steps_backward)
        extra.append(n - model.stats.steps_backward - model.stats.rejected_backward)
    assert steps[1] > 3 * steps[0], steps
    assert extra[0] == extra[1] and 0 <= extra[0] <= 3 * (len(t_span) - 1) + 2, extra
