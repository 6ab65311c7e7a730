"""Float32 round-off of the Runge–Kutta state updates.

Every stage input, end state and dense-output point is ``y + h * (Σ a_j k_j)``. Computed as one fused
``addmv(y, K, a, alpha=h)``, CPU BLAS adds the stages into ``y`` one column at a time, so each nonzero weight
costs a rounding at the state's magnitude: about sqrt(5) times the round-off of a single addition per dopri5
step. With many short steps (a dense ``t_span`` stepped onto point by point, where the tolerance no longer
matters) float32 solves then drifted 2-3 times further from the true solution than torchdyn or torchdiffeq.
"""

from __future__ import annotations

import pytest
import torch
from torchdiffeq import odeint as torchdiffeq_odeint

from nodecore.numerics import SOLVERS, odeint
from nodecore.numerics.stats import StepCounts

F32, F64 = torch.float32, torch.float64
EPS32 = torch.finfo(F32).eps
# A damped rotation: non-chaotic, with the closed form x(t) = x0 @ expm(A t)^T.
A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=F64)


def rotation(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x @ A.to(x.dtype).T


def exact(x0: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    return torch.stack([x0.to(F64) @ torch.linalg.matrix_exp(A * t).T for t in times.to(F64)])


def rms(error: torch.Tensor) -> float:
    return float(error.pow(2).mean().sqrt())


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_float32_many_short_steps_beat_torchdiffeq(method: str):
    """2000 steps onto a dense t_span, in float32: round-off dominated (the tolerance is far below what one
    step of 0.002 makes), so the error is the accumulated rounding. Against torchdiffeq stepping onto the
    same points (``step_t``): nodecore's RMS error is about 0.45 of torchdiffeq's (0.7-0.95 with the fused
    addmv updates)."""
    torch.manual_seed(0)
    x0 = torch.randn(64, 2, dtype=F64) * 10
    t_span = torch.linspace(0, 4, 2001, dtype=F32)
    reference = exact(x0, t_span)
    with torch.no_grad():
        _, ours = odeint(rotation, x0.to(F32), t_span, method, atol=1e-6, rtol=1e-6, max_steps=100_000)
        theirs = torchdiffeq_odeint(rotation, x0.to(F32), t_span, method=method, atol=1e-6, rtol=1e-6,
                                    options=dict(step_t=t_span))
    ours_err, theirs_err = rms(ours.to(F64) - reference), rms(theirs.to(F64) - reference)
    assert ours_err <= 0.65 * theirs_err, (ours_err, theirs_err)
    # The same with a graph (the stage products are recorded differently).
    _, graphed = odeint(rotation, x0.to(F32).requires_grad_(), t_span, method, atol=1e-6, rtol=1e-6,
                        max_steps=100_000)
    assert rms(graphed.detach().to(F64) - reference) <= 0.65 * theirs_err


class Recording(torch.nn.Module):
    """A nonlinear field of magnitude ~100 (Lorenz-like) that keeps a float64 copy of every stage input."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().to(F64).clone())
        return 100 * torch.sin(x)


@pytest.mark.parametrize("name", ["dopri5", "tsit5", "dopri8", "rk4"])
@pytest.mark.parametrize("graph", [False, True])
def test_each_state_update_rounds_once(name: str, graph: bool):
    """Each stage input and the end state of a float32 step equal ``y + h Σ a_j k_j`` (in float64 from the
    same float32 numbers) to about one rounding: RMS relative error under 0.3 eps (one fused addmv per stage
    gave about 0.45 eps)."""
    torch.manual_seed(1)
    solver = SOLVERS[name].build()
    tb = solver.tableau
    y = (torch.randn(4096, dtype=F64) * 20).to(F32)
    h = 1e-4  # small increments: the sum of the stages itself rounds far below the state (dopri8's weights are large)
    field = Recording()
    with torch.set_grad_enabled(graph):
        ws = None if graph else solver.workspace(y)
        try:
            attempt = solver.attempt(field, y.requires_grad_() if graph else y, 0.0, h, None, StepCounts(),
                                     need_error=False, workspace=ws)
            y1 = attempt.y1.detach().to(F64).clone()
            K = attempt.stages.detach().to(F64).clone()  # [s, N], the float32 stages
        finally:
            if ws is not None:
                ws.busy = False
    y64 = y.detach().to(F64)
    errors = []
    for i in range(1, tb.stages):
        weights = torch.tensor(tb.a[i], dtype=F64).to(F32).to(F64)  # the float32 coefficients used
        expected = y64 + h * (K[:i].t() @ weights)
        errors.append((field.inputs[i] - expected) / expected.abs())
    b = torch.tensor(tb.b, dtype=F64).to(F32).to(F64)
    expected = y64 + h * (K.t() @ b)
    errors.append((y1 - expected) / expected.abs())
    for i, err in enumerate(errors, 1):
        assert rms(err) < 0.3 * EPS32, (i, rms(err) / EPS32)


def test_dense_output_rounds_once():
    """The interpolated points are ``y0 + h Σ P_i(θ) k_i`` to about one rounding too."""
    torch.manual_seed(2)
    solver = SOLVERS["dopri5"].build()
    y = (torch.randn(4096, dtype=F64) * 20).to(F32)
    h, thetas = 1e-3, [0.25, 0.5, 0.75]
    with torch.no_grad():
        attempt = solver.attempt(Recording(), y, 0.0, h, None, StepCounts(), need_error=False)
        K = attempt.stages.clone()
        for chosen in (thetas, thetas[:1]):
            points = solver.interpolate(Recording(), y, 0.0, h, K, chosen, StepCounts())
            W = solver.dense_weights(chosen, y).to(F64)  # [S, m], float32 weights
            for m, point in enumerate(points):
                expected = y.to(F64) + h * (K.to(F64).t() @ W[:, m])
                assert rms((point.to(F64) - expected) / expected.abs()) < 0.3 * EPS32
