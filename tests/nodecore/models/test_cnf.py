"""Tests for nodecore.models.cnf: the log-density a CNF carries against the analytic change of variables.

A linear field ``f(x) = A x`` has a closed form: ``x(T) = expm(A T) x0`` and a log-density change of exactly
``-T tr(A)``, so the pushed-forward standard Gaussian is ``N(0, E E^T)`` with ``E = expm(A T)``. Everything is
float64 with fixed seeds; the solver tolerance (1e-10) bounds the deterministic comparisons.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.distributions import MultivariateNormal

from nodecore.fields import DepthCat
from nodecore.models import CNF, REQUIRES_NOISE, NeuralODE, autograd_trace, hutch_trace

F64 = torch.float64
TIGHT = 1e-10
A = torch.tensor([[-0.5, 1.0, 0.2], [-1.0, -0.3, 0.0], [0.4, 0.1, 0.25]], dtype=F64)
D = A.shape[0]
T = 1.5


def linear_field(matrix: Tensor = A) -> nn.Linear:
    """``f(x) = matrix @ x`` per row (a Linear without bias, so the field has parameters for the adjoint)."""
    layer = nn.Linear(matrix.shape[0], matrix.shape[0], bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(matrix)
    return layer


def mlp(dim: int = 2, hidden: int = 16, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim)).double()


def gaussian(dim: int = D) -> MultivariateNormal:
    return MultivariateNormal(torch.zeros(dim, dtype=F64), torch.eye(dim, dtype=F64))


class Rademacher:
    """Uniform random signs: ``sample((B,)) -> [B, dim]`` of +-1."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def sample(self, shape: tuple[int, ...]) -> Tensor:
        return torch.randint(0, 2, (*shape, self.dim)).to(F64) * 2 - 1


def with_logp(x: Tensor) -> Tensor:
    """``[B, D] -> [B, 1 + D]``: the log-density change column (zero) in front."""
    return torch.cat([torch.zeros(x.shape[0], 1, dtype=x.dtype), x], 1)


def exact_traces(net: nn.Module, x: Tensor) -> Tensor:
    """Per-sample Jacobian traces from torch.autograd.functional.jacobian, the reference: ``[B]``."""
    return torch.stack([torch.autograd.functional.jacobian(net, row).trace() for row in x])


def test_autograd_trace_is_the_jacobian_trace() -> None:
    net = mlp(3)
    x = torch.randn(5, 3, dtype=F64, requires_grad=True)
    torch.testing.assert_close(autograd_trace(net(x), x), exact_traces(net, x.detach()), rtol=1e-12, atol=1e-12)


def test_hutch_trace_is_exact_in_expectation_over_rademacher_signs() -> None:
    """Averaged over all 2^D sign vectors (E[v v^T] = I exactly), Hutchinson's estimate is the exact trace."""
    net, dim = mlp(3), 3
    x = torch.randn(1, dim, dtype=F64)
    signs = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=F64)] * dim)  # [8, 3]
    rows = x.expand(len(signs), dim).clone().requires_grad_(True)
    estimate = hutch_trace(net(rows), rows, noise=signs).mean()
    torch.testing.assert_close(estimate, exact_traces(net, x)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("noise_kind", ["gaussian", "rademacher"])
def test_hutch_trace_is_unbiased(noise_kind: str) -> None:
    """The mean of 20000 draws is within 5 standard errors of the exact trace (a nonlinear field)."""
    torch.manual_seed(1)
    net, dim, draws = mlp(3), 3, 20_000
    x = torch.randn(1, dim, dtype=F64)
    noise = gaussian(dim).sample((draws,)) if noise_kind == "gaussian" else Rademacher(dim).sample((draws,))
    rows = x.expand(draws, dim).clone().requires_grad_(True)
    estimates = hutch_trace(net(rows), rows, noise=noise)
    error = (estimates.mean() - exact_traces(net, x)[0]).abs()
    assert error < 5 * estimates.std() / math.sqrt(draws), (float(error), float(estimates.std()))


def test_linear_flow_matches_the_change_of_variables() -> None:
    """Forward from N(0, I): the log-det column is -T tr(A), x(T) = expm(AT) x0, log p_T matches N(0, E E^T)."""
    torch.manual_seed(2)
    x0 = torch.randn(64, D, dtype=F64)
    model = NeuralODE(CNF(linear_field()), solver="dopri5", atol=TIGHT, rtol=TIGHT)
    _, trajectory = model(with_logp(x0), torch.tensor([0.0, T], dtype=F64))
    delta, xT = trajectory[-1][:, 0], trajectory[-1][:, 1:]
    torch.testing.assert_close(delta, torch.full_like(delta, -T * float(A.trace())), rtol=1e-8, atol=1e-8)
    propagator = torch.linalg.matrix_exp(A * T)
    torch.testing.assert_close(xT, x0 @ propagator.T, rtol=1e-8, atol=1e-8)
    pushed = MultivariateNormal(torch.zeros(D, dtype=F64), propagator @ propagator.T)
    torch.testing.assert_close(gaussian().log_prob(x0) + delta, pushed.log_prob(xT), rtol=1e-8, atol=1e-8)


def test_linear_flow_backwards_gives_the_data_log_density() -> None:
    """torchdyn's use: data at t = T solved back to the base at t = 0; log p(x) = log p_base(z) - delta."""
    torch.manual_seed(3)
    propagator = torch.linalg.matrix_exp(A * T)
    data = MultivariateNormal(torch.zeros(D, dtype=F64), propagator @ propagator.T)
    x = data.sample((64,))
    model = NeuralODE(CNF(linear_field()), solver="dopri5", atol=TIGHT, rtol=TIGHT)
    model.t_span = torch.tensor([T, 0.0], dtype=F64)
    _, trajectory = model(with_logp(x))
    z, delta = trajectory[-1][:, 1:], trajectory[-1][:, 0]
    torch.testing.assert_close(gaussian().log_prob(z) - delta, data.log_prob(x), rtol=1e-8, atol=1e-8)


def test_a_depth_variant_net_sees_t_and_its_trace_ignores_the_t_column() -> None:
    """``f(t, x) = W x + w t`` through DepthCat: the log-det is still -T tr(W), x(T) the affine solution."""
    layer = nn.Linear(D + 1, D, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.cat([A, torch.ones(D, 1, dtype=F64)], 1))
    x0 = torch.randn(8, D, dtype=F64)
    model = NeuralODE(CNF(nn.Sequential(DepthCat(1), layer)), solver="dopri5", atol=TIGHT, rtol=TIGHT)
    final = model(with_logp(x0), torch.tensor([0.0, T], dtype=F64))[1][-1]
    torch.testing.assert_close(final[:, 0], torch.full((8,), -T * float(A.trace()), dtype=F64), rtol=1e-8, atol=1e-8)
    # x(T) = e^{AT} x0 + ∫_0^T e^{A(T-s)} 1 s ds, the integral by Gauss-Legendre quadrature (exact to 1e-12 here).
    nodes, weights = (torch.tensor(v, dtype=F64) for v in np.polynomial.legendre.leggauss(20))
    s = (nodes + 1) * T / 2
    forcing = sum(w * T / 2 * torch.linalg.matrix_exp(A * (T - si)) @ (torch.ones(D, dtype=F64) * si)
                  for w, si in zip(weights, s))
    torch.testing.assert_close(final[:, 1:], x0 @ torch.linalg.matrix_exp(A * T).T + forcing, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("noise_kind", ["gaussian", "rademacher"])
def test_hutchinson_flow_of_a_linear_field(noise_kind: str) -> None:
    """Each row's log-det is exactly -T v^T A v (one noise vector per solve); their mean is -T tr(A)."""
    torch.manual_seed(4)
    rows = 20_000
    dist = gaussian() if noise_kind == "gaussian" else Rademacher(D)
    cnf = CNF(linear_field(), trace_estimator=hutch_trace, noise_dist=dist)
    x0 = with_logp(torch.randn(rows, D, dtype=F64))
    cnf.before_odeint(x0)
    _, trajectory = NeuralODE(cnf, solver="dopri5", atol=TIGHT, rtol=TIGHT)(x0, torch.tensor([0.0, T], dtype=F64))
    delta, v = trajectory[-1][:, 0], cnf.noise
    torch.testing.assert_close(delta, -T * torch.einsum("bi,ij,bj->b", v, A, v), rtol=1e-8, atol=1e-8)
    sym = (A + A.T) / 2
    variance = 2 * (sym.pow(2).sum() - (sym.diag().pow(2).sum() if noise_kind == "rademacher" else 0))
    assert (-delta.mean() / T - A.trace()).abs() < 5 * variance.sqrt() / math.sqrt(rows)


def nll(model: NeuralODE, x: Tensor) -> Tensor:
    """Mean negative log-likelihood of ``x`` under a CNF run backwards from t = 1 to the standard Gaussian."""
    _, trajectory = model(with_logp(x), torch.tensor([1.0, 0.0], dtype=F64))
    z, delta = trajectory[-1][:, 1:], trajectory[-1][:, 0]
    return -(gaussian(x.shape[1]).log_prob(z) - delta).mean()


def parameter_gradient(sensitivity: str, x: Tensor) -> Tensor:
    cnf = CNF(mlp(2, seed=5))
    model = NeuralODE(cnf, solver="dopri5", atol=TIGHT, rtol=TIGHT, sensitivity=sensitivity, atol_adjoint=TIGHT,
                      rtol_adjoint=TIGHT)
    nll(model, x).backward()
    return torch.cat([p.grad.reshape(-1) for p in cnf.parameters()])


def test_cnf_gradients_agree_across_sensitivities_and_with_finite_differences() -> None:
    torch.manual_seed(6)
    x = torch.randn(16, 2, dtype=F64)
    reference = parameter_gradient("autograd", x)
    for sensitivity in ("adjoint", "interpolated_adjoint"):
        torch.testing.assert_close(parameter_gradient(sensitivity, x), reference, rtol=1e-6, atol=1e-8)
    # A central difference of the loss along a random direction in parameter space.
    cnf = CNF(mlp(2, seed=5))
    model = NeuralODE(cnf, solver="dopri5", atol=TIGHT, rtol=TIGHT)
    params = list(cnf.parameters())
    direction = [torch.randn_like(p) for p in params]
    step = 1e-5
    losses = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(sign * step * d)
        with torch.no_grad():
            losses.append(float(nll(model, x)))
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(sign * step * d)
    expected = float(reference @ torch.cat([d.reshape(-1) for d in direction]))
    assert abs((losses[0] - losses[1]) / (2 * step) - expected) < 1e-6 * max(1.0, abs(expected))


def test_hutchinson_noise_is_shared_by_the_forward_and_adjoint_passes() -> None:
    """With the noise drawn once for the solve, the adjoint's gradient equals autograd's."""
    torch.manual_seed(7)
    x = torch.randn(16, 2, dtype=F64)
    grads = []
    for sensitivity in ("autograd", "adjoint"):
        cnf = CNF(mlp(2, seed=5), trace_estimator=hutch_trace, noise_dist=gaussian(2))
        torch.manual_seed(8)
        cnf.before_odeint(with_logp(x))
        model = NeuralODE(cnf, solver="dopri5", atol=TIGHT, rtol=TIGHT, sensitivity=sensitivity, atol_adjoint=TIGHT,
                          rtol_adjoint=TIGHT)
        nll(model, x).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in cnf.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-8)


def test_training_a_cnf_lowers_the_negative_log_likelihood() -> None:
    """Thirty Adam steps on a shifted, squeezed Gaussian (fixed-step rk4, both estimators)."""
    torch.manual_seed(9)
    data = torch.randn(256, 2, dtype=F64) * torch.tensor([0.5, 1.5], dtype=F64) + torch.tensor([1.0, -1.0], dtype=F64)
    for estimator, dist in ((autograd_trace, None), (hutch_trace, gaussian(2))):
        cnf = CNF(mlp(2, hidden=32, seed=10), trace_estimator=estimator, noise_dist=dist)
        model = NeuralODE(cnf, solver="rk4", step_size=0.25)
        optimizer = torch.optim.Adam(cnf.parameters(), lr=2e-2)
        with torch.no_grad():
            cnf.noise = None
            before = float(nll(model, data))
        for _ in range(30):
            optimizer.zero_grad()
            cnf.before_odeint(with_logp(data))
            loss = nll(model, data)
            loss.backward()
            optimizer.step()
        cnf.trace_estimator, cnf.noise_dist = autograd_trace, None  # score with the exact trace
        with torch.no_grad():
            after = float(nll(model, data))
        assert after < before - 0.3, (estimator.__name__, before, after)


def test_before_odeint_draws_fresh_noise_and_forward_keeps_it() -> None:
    torch.manual_seed(11)
    cnf = CNF(mlp(2), trace_estimator=hutch_trace, noise_dist=gaussian(2))
    x = with_logp(torch.randn(4, 2, dtype=F64))
    assert cnf.noise is None
    cnf(x)  # no noise yet: forward draws it
    first = cnf.noise
    assert first.shape == (4, 2) and first.dtype == F64
    cnf(x)
    assert cnf.noise is first  # kept within a solve
    cnf.before_odeint(x)
    assert cnf.noise.shape == (4, 2) and not torch.equal(cnf.noise, first)
    cnf(with_logp(torch.randn(3, 2, dtype=F64)))  # another batch size: drawn again
    assert cnf.noise.shape == (3, 2)


def test_neuralode_draws_new_noise_for_each_solve() -> None:
    torch.manual_seed(12)
    cnf = CNF(mlp(2), trace_estimator=hutch_trace, noise_dist=gaussian(2))
    model = NeuralODE(cnf, solver="rk4", step_size=0.5)
    x = with_logp(torch.randn(4, 2, dtype=F64))
    model(x)
    first = cnf.noise
    model(x)
    assert not torch.equal(cnf.noise, first)


def test_column_zero_and_grad_modes() -> None:
    """The log-det column gets a zero (not missing) gradient; outside grad mode the output is detached and the
    caller's tensor is left alone; a torchdyn-style estimator (x_out, x_in, noise=None) is called as such."""
    cnf = CNF(mlp(2))
    x = with_logp(torch.randn(4, 2, dtype=F64)).requires_grad_(True)
    (grad,) = torch.autograd.grad(cnf(x).sum(), x)
    assert torch.equal(grad[:, 0], torch.zeros(4, dtype=F64))
    plain = with_logp(torch.randn(4, 2, dtype=F64))
    with torch.no_grad():
        out = cnf(plain)
    assert not out.requires_grad and not plain.requires_grad
    torch.testing.assert_close(out, cnf(plain).detach())

    calls = []

    def torchdyn_style(x_out: Tensor, x_in: Tensor, noise: Tensor | None = None) -> Tensor:
        calls.append(noise)
        return autograd_trace(x_out, x_in)

    torch.testing.assert_close(CNF(cnf.net, trace_estimator=torchdyn_style)(plain), cnf(plain))
    assert calls == [None]


class NoSample:
    pass


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"trace_estimator": "hutch"}, TypeError, "trace_estimator must be autograd_trace, hutch_trace or a callable"),
        ({"trace_estimator": hutch_trace}, ValueError, "needs noise: pass noise_dist"),
        ({"noise_dist": NoSample()}, TypeError, "noise_dist must have a sample"),
        ({"order": 2}, ValueError, "order 1 only, got order=2"),
    ],
)
def test_bad_construction_is_refused(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        CNF(mlp(2), **kwargs)
    with pytest.raises(TypeError, match="net must be an nn.Module or callable"):
        CNF(3)
    assert REQUIRES_NOISE == [hutch_trace]


def test_bad_shapes_are_named() -> None:
    x = with_logp(torch.randn(4, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"state must be \[B, 1 \+ D\] with D >= 1.*\(4, 1\)"):
        CNF(mlp(2))(x[:, :1])
    with pytest.raises(ValueError, match=r"net must map x \(4, 2\) to a tensor of the same shape, got \(4, 3\)"):
        CNF(nn.Linear(2, 3).double())(x)
    with pytest.raises(ValueError, match=r"one trace per sample, shape \[4\], got \(4, 1\)"):
        CNF(mlp(2), trace_estimator=lambda x_out, x_in, noise=None: x_out[:, :1])(x)
    with pytest.raises(ValueError, match=r"noise_dist.sample\(\(4,\)\) must return \[B, D\] = \(4, 2\).*\(4, 3\)"):
        CNF(mlp(2), trace_estimator=hutch_trace, noise_dist=gaussian(3))(x)
    z = torch.randn(4, 2, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match="hutch_trace needs noise"):
        hutch_trace(z * 2, z)
    with pytest.raises(ValueError, match=r"noise must have the state's shape \(4, 2\), got \(4, 3\)"):
        hutch_trace(z * 2, z, noise=torch.randn(4, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"one shape \[B, D\], got x_out \(4, 3\)"):
        autograd_trace(torch.randn(4, 3, dtype=F64), z)
    with pytest.raises(ValueError, match="x_in must require grad"):
        autograd_trace(z.detach(), z.detach())
