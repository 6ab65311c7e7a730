"""SDEProblem in torchdyn master's call style, beside the positional order 1.0.6's NeuralSDE passes it.

Master: ``SDEProblem(defunc=..., solver=..., interpolator=None, atol, rtol, sensitivity, solver_adjoint,
atol_adjoint, rtol_adjoint)``; ``prob(x, t_span, bm)`` and ``prob.sdeint(x, t_span, bm, save_at)`` return
``(t_eval, trajectory)``. Checked against closed forms: zero diffusion is the linear ODE ``x(t) = x0 expm(A t)^T``;
additive noise with a fixed Brownian path gives ``x(T) = x0 e^{aT} + s int e^{a(T-u)} dW``, whose gradient in ``a``
the adjoint must match.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchsde
from torch import Tensor, nn

import nodecore.core
from nodecore.core import SDEFunc, SDEProblem
from nodecore.models import NeuralSDE
from tests.nodecore.models._fields import Constant, Linear

F64 = torch.float64
A = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=F64)


def exact_linear(x0: Tensor, t_span: Tensor) -> Tensor:
    return torch.stack([x0 @ torch.linalg.matrix_exp(A * t).T for t in t_span])


def zero_noise_sde() -> SDEFunc:
    return SDEFunc(Linear(A), Constant(torch.zeros(2, dtype=F64)))


def test_masters_keywords_and_call_return_t_eval_and_the_ode_solution() -> None:
    x0 = torch.tensor([[1.0, 0.0], [0.5, -2.0]], dtype=F64)
    t_span = torch.tensor([0.0, 0.25, 0.6, 1.0], dtype=F64)
    bm = torchsde.BrownianInterval(t0=0.0, t1=1.0, size=(2, 2), dtype=F64, entropy=1,
                                   levy_area_approximation="space-time")
    prob = SDEProblem(defunc=zero_noise_sde(), solver="euler", interpolator=None, atol=1e-4, rtol=1e-4,
                      sensitivity="autograd")
    assert prob.interpolator is None and prob.solver == "euler"
    t_eval, trajectory = prob(x0, t_span, bm)  # master's positional forward(x, t_span, bm)
    torch.testing.assert_close(t_eval, t_span)
    torch.testing.assert_close(trajectory, exact_linear(x0, t_span), atol=2e-3, rtol=0)  # Euler, ds=1e-3
    assert torch.equal(trajectory[0], x0)

    t_eval2, trajectory2 = prob.sdeint(x0, t_span, bm)
    torch.testing.assert_close(trajectory2, trajectory, atol=1e-12, rtol=0)
    t_saved, saved = prob.sdeint(x0, t_span, bm, save_at=[0.25, 1.0])
    torch.testing.assert_close(t_saved, t_span[[1, 3]])
    torch.testing.assert_close(saved, trajectory[[1, 3]], atol=1e-12, rtol=0)

    # 1.0.6's style is unchanged: prob(x) is the state at s_span[-1]
    final = prob(x0)
    assert final.shape == (2, 2)
    torch.testing.assert_close(final, exact_linear(x0, torch.tensor([1.0], dtype=F64))[0], atol=2e-3, rtol=0)


def test_positional_1_0_6_order_still_works_and_masters_is_refused_with_the_fix() -> None:
    x0 = torch.ones(3, 2, dtype=F64)
    prob = SDEProblem(zero_noise_sde(), 1, "autograd", torch.linspace(0, 1, 3, dtype=F64), "srk", ds=0.01)
    torch.testing.assert_close(prob(x0), exact_linear(x0, torch.tensor([1.0], dtype=F64))[0], atol=1e-6, rtol=0)
    with pytest.raises(TypeError, match=r"defunc=sde, solver='euler'"):
        SDEProblem(zero_noise_sde(), "euler")  # master's positional (defunc, solver, ...)


@pytest.mark.parametrize(("kwargs", "error", "fragment"), [
    ({"interpolator": "linear"}, ValueError, "no interpolator"),
    ({"solver_adjoint": "euler"}, ValueError, "only sensitivity='adjoint'"),
    ({"atol_adjoint": 1e-6}, ValueError, "atol_adjoint"),
    ({"sensitivity": "adjoint", "solver_adjoint": "nope"}, ValueError, "solver_adjoint: unknown solver 'nope'"),
    ({"sensitivity": "adjoint", "solver_adjoint": "milstein_stratonovich"}, ValueError, "stratonovich"),
    ({"sensitivity": "adjoint", "rtol_adjoint": -1.0}, ValueError, "rtol_adjoint"),
])
def test_bad_master_options_fail_at_construction(kwargs: dict, error: type, fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        SDEProblem(defunc=zero_noise_sde(), solver="euler", **kwargs)


def test_func_and_defunc_name_the_same_argument() -> None:
    with pytest.raises(ValueError, match="not both"):
        SDEProblem(zero_noise_sde(), defunc=zero_noise_sde())
    with pytest.raises(TypeError, match="needs the SDE"):
        SDEProblem(solver="euler")


def test_non_empty_args_and_a_bad_save_at_fail_before_the_solve() -> None:
    prob = SDEProblem(defunc=zero_noise_sde(), solver="euler")
    x0 = torch.ones(2, 2, dtype=F64)
    with pytest.raises(NotImplementedError, match="args"):
        prob.sdeint(x0, torch.linspace(0, 1, 3, dtype=F64), args={"u": 1})
    with pytest.raises(ValueError):
        prob(x0, torch.linspace(0, 1, 3, dtype=F64), None, [0.3])
    assert prob.defunc.nfe == 0


class AdditiveOU(nn.Module):
    """``dx = a x dt + s dW`` (scalar state): the drift's ``a`` is learned, the diffusion ``s`` fixed."""

    def __init__(self, a: float, s: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=F64))
        self.s = s
        self.noise_type, self.sde_type = "diagonal", "ito"

    def f(self, t: Tensor, x: Tensor) -> Tensor:
        return self.a * x

    def g(self, t: Tensor, x: Tensor) -> Tensor:
        return torch.full_like(x, self.s)


@pytest.mark.parametrize("solver_adjoint", ["euler", "milstein_ito", None])
def test_adjoint_with_masters_solver_adjoint_matches_the_closed_form_gradient(solver_adjoint: str | None,
                                                                               monkeypatch) -> None:
    """d x(T)/da for x(T) = x0 e^{aT} + s sum_k e^{a(T - t_k)} dW_k on one Brownian path, by the adjoint."""
    a, s, T, ds, n = -0.7, 0.3, 1.0, 1e-3, 4
    x0 = torch.linspace(0.5, 2.0, n, dtype=F64)[:, None]
    bm = torchsde.BrownianInterval(t0=0.0, t1=T, size=(n, 1), dtype=F64, entropy=7, dt=ds,
                                   levy_area_approximation="space-time")
    seen: dict = {}
    original = torchsde.sdeint_adjoint

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(torchsde, "sdeint_adjoint", spy)
    sde = AdditiveOU(a, s)
    prob = SDEProblem(defunc=sde, solver="euler", sensitivity="adjoint", solver_adjoint=solver_adjoint, ds=ds)
    t_eval, trajectory = prob(x0, torch.tensor([0.0, T], dtype=F64), bm)
    trajectory[-1].sum().backward()
    expected_method = {"euler": "euler", "milstein_ito": "milstein", None: None}[solver_adjoint]
    assert seen.get("adjoint_method") == expected_method
    assert "adjoint_options" not in seen  # torchsde's derivative-free Milstein cannot solve an adjoint SDE

    # the closed form on the same path: dW_k from bm on the Euler grid, d/da summed over the batch
    grid = torch.linspace(0.0, T, round(T / ds) + 1, dtype=F64)
    dW = torch.stack([bm(grid[k], grid[k + 1]) for k in range(len(grid) - 1)])  # [K, n, 1]
    weights = (T - grid[:-1]).reshape(-1, 1, 1) * torch.exp(a * (T - grid[:-1])).reshape(-1, 1, 1)
    exact = (x0 * T * math.exp(a * T)).sum() + s * (weights * dW).sum()
    assert sde.a.grad.item() == pytest.approx(exact.item(), rel=1e-2, abs=1e-3)
    # and the forward's final state against x0 e^{aT} + s sum e^{a(T-t_k)} dW_k (Euler's O(ds))
    closed = x0 * math.exp(a * T) + s * (torch.exp(a * (T - grid[:-1])).reshape(-1, 1, 1) * dW).sum(0)
    torch.testing.assert_close(trajectory[-1].detach(), closed, atol=5e-3, rtol=0)


def test_neural_sde_inherits_sdeint_with_its_bm() -> None:
    x0 = torch.tensor([[1.0, 0.0]], dtype=F64)
    t_span = torch.linspace(0, 1, 4, dtype=F64)
    bm = torchsde.BrownianInterval(t0=0.0, t1=1.0, size=(1, 2), dtype=F64, entropy=2,
                                   levy_area_approximation="space-time")
    model = NeuralSDE(Linear(A), Constant(torch.tensor([0.2, 0.1], dtype=F64)), solver="euler", t_span=t_span, bm=bm)
    t_eval, via_sdeint = model.sdeint(x0, t_span)
    _, via_forward = model(x0, t_span)
    torch.testing.assert_close(via_sdeint, via_forward, atol=1e-12, rtol=0)  # the same stored path


def test_sdefunc_takes_masters_positional_noise_and_sde_types_and_core_exports_it() -> None:
    func = SDEFunc(Linear(A), Constant(torch.zeros(2, dtype=F64)), 1, "diagonal", "stratonovich")
    assert (func.noise_type, func.sde_type) == ("diagonal", "stratonovich")
    assert {"SDEFunc", "SDEProblem"} <= set(nodecore.core.__all__)
