"""CUDA paths: skipped without a GPU (CI has none); run on a GPU machine with `pytest tests/nodecore/test_cuda.py`."""

import warnings

import pytest
import torch
from torch import nn

from nodecore import SOLVER_NAMES, NeuralODE, ToyDataset, evaluate, load_model, model_config, save_checkpoint, train
from nodecore.architectures import MLPFieldSpec, build_field
from nodecore.numerics import odeint
from nodecore.numerics.solvers.templates import DiffEqSolver

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICE = "cuda:0"


def _field() -> nn.Module:
    torch.manual_seed(0)
    return build_field(MLPFieldSpec(hidden=16))


@pytest.mark.parametrize("solver", SOLVER_NAMES)
@pytest.mark.parametrize("sensitivity", ["autograd", "adjoint"])
def test_every_solver_and_sensitivity_matches_cpu(solver, sensitivity):
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    t_span = torch.linspace(0, 1, 5)
    grads = {}
    for device in ("cpu", DEVICE):
        field = _field().to(device)
        model = NeuralODE(field, solver=solver, sensitivity=sensitivity, atol=1e-6, rtol=1e-6,
                          atol_adjoint=1e-6, rtol_adjoint=1e-6)
        t_eval, trajectory = model(x.to(device), t_span.to(device))
        assert trajectory.device.type == torch.device(device).type and t_eval.device == trajectory.device
        trajectory[-1].pow(2).sum().backward()
        grads[device] = (trajectory.detach().cpu(), [p.grad.cpu() for p in field.parameters()])
        assert model.stats.nfe_forward > 0
    torch.testing.assert_close(grads[DEVICE][0], grads["cpu"][0], atol=1e-4, rtol=1e-4)
    for a, b in zip(grads[DEVICE][1], grads["cpu"][1]):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_t_span_on_the_cpu_is_rejected_for_a_cuda_state():
    model = NeuralODE(_field().to(DEVICE))
    with pytest.raises(ValueError, match="t_span is on cpu"):
        model(torch.zeros(4, 2, device=DEVICE), torch.linspace(0, 1, 3))


def test_parameters_on_another_device_are_rejected():
    model = NeuralODE(_field())
    with pytest.raises(ValueError, match="model.to"):
        model(torch.zeros(4, 2, device=DEVICE), torch.linspace(0, 1, 3, device=DEVICE))


def test_tutorial_trains_on_cuda_and_checkpoint_loads_on_cpu(tmp_path):
    X, y = ToyDataset().generate(512, "moons", noise=0.1, seed=0)
    X_test, y_test = ToyDataset().generate(2048, "moons", noise=0.1, seed=1)
    model = NeuralODE(_field(), sensitivity="adjoint").to(DEVICE)
    t_span = torch.linspace(0, 1, 5, device=DEVICE)
    train(model, X.to(DEVICE), y.to(DEVICE), t_span=t_span, epochs=200)
    assert evaluate(model, X_test.to(DEVICE), y_test.to(DEVICE), t_span=t_span).accuracy >= 0.99
    path = save_checkpoint(tmp_path / "m.pt", model, config=model_config(MLPFieldSpec(hidden=16), model))
    restored, _ = load_model(path)  # CPU
    assert evaluate(restored, X_test, y_test, t_span=t_span.cpu()).accuracy >= 0.99


def _host_syncs(run) -> int:
    """How many times ``run()`` makes the host wait for the GPU (torch's sync debug mode: item/tolist, copies from
    pageable memory, synchronize calls), counted from its warnings."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


class _TimedField(nn.Module):
    """A field that reads its time argument (so the solver must build stage times) around a small MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _field()

    def forward(self, t, x):
        return self.net(x) * torch.cos(t)


def _solve_syncs(solver, interpolator, grad, tolerance, points, timed):
    field = (_TimedField() if timed else _field()).to(DEVICE)
    model = NeuralODE(field, solver=solver, interpolator=interpolator, atol=tolerance, rtol=tolerance)
    x = torch.randn(256, 2, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(0))
    t_span = torch.linspace(0, 2, points, device=DEVICE)
    model(x, t_span)  # warm-up: first-call checks and caches
    with torch.set_grad_enabled(grad):
        syncs = _host_syncs(lambda: model(x, t_span))
    stats = model.stats
    return syncs, stats.steps_forward + stats.rejected_forward


@pytest.mark.parametrize("timed", [False, True], ids=["autonomous", "reads-t"])
@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "autograd"])
@pytest.mark.parametrize("solver, interpolator", [("dopri5", "dense"), ("dopri5", "step"), ("dopri8", "dense"),
                                                  ("tsit5", "dense")])
def test_an_adaptive_solve_waits_for_the_gpu_once_per_step_attempt(solver, interpolator, grad, timed):
    """The only host sync per step is reading the error ratio: more steps and more output points add none."""
    counts = {(tol, points): _solve_syncs(solver, interpolator, grad, tol, points, timed)
              for tol in (1e-3, 1e-7) for points in (5, 41)}
    extra = {key: syncs - attempts for key, (syncs, attempts) in counts.items()}
    assert counts[(1e-7, 41)][1] > 2 * counts[(1e-3, 5)][1]  # the tighter solve really takes more steps
    assert len(set(extra.values())) == 1, counts  # a constant per solve, whatever the steps and outputs
    assert 0 <= next(iter(extra.values())) <= 6, counts


@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "autograd"])
@pytest.mark.parametrize("solver", ["euler", "rk4", "dopri5"])
def test_a_constant_step_solve_waits_for_the_gpu_a_constant_number_of_times(solver, grad):
    field = _TimedField().to(DEVICE)
    x = torch.randn(256, 2, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(0))
    t_span = torch.linspace(0, 1, 5, device=DEVICE)
    syncs = []
    for step_size in (0.1, 0.01):
        model = NeuralODE(field, solver=solver, step_size=step_size)
        model(x, t_span)
        with torch.set_grad_enabled(grad):
            syncs.append(_host_syncs(lambda: model(x, t_span)))
    assert syncs[0] == syncs[1] and syncs[0] <= 4, syncs  # ten times the steps, no more syncs


def test_the_adjoint_backward_solve_waits_once_per_step_attempt():
    """Beyond the error ratio of each backward step, a fixed number of syncs per output interval."""
    extra = []
    for tolerance in (1e-3, 1e-8):
        model = NeuralODE(_TimedField().to(DEVICE), solver="dopri5", sensitivity="adjoint", atol=tolerance,
                          rtol=tolerance, atol_adjoint=tolerance, rtol_adjoint=tolerance, interpolator="dense")
        x = torch.randn(256, 2, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(0))
        t_span = torch.linspace(0, 2, 3, device=DEVICE)  # few intervals: each restarts the backward solve
        model(x, t_span)[1].pow(2).sum().backward()  # warm-up
        loss = model(x, t_span)[1].pow(2).sum()
        syncs = _host_syncs(loss.backward)
        stats = model.stats
        extra.append((syncs - stats.steps_backward - stats.rejected_backward, stats.steps_backward))
    assert extra[1][1] > 3 * extra[0][1], extra  # on the CPU: 5 and 23 backward steps
    # a constant per output interval (each restarts its solve: a starting step and a look at the incoming gradient)
    assert extra[0][0] == extra[1][0] and 0 <= extra[0][0] <= 3 * (len(t_span) - 1) + 2, extra


class _OwnMidpoint(DiffEqSolver):
    def __init__(self) -> None:
        super().__init__(order=2)
        self.seen = []

    def sync_device_dtype(self, x, t_span):
        self.seen.append(t_span)
        return super().sync_device_dtype(x, t_span)

    def step(self, f, x, t, dt, k1=None, args=None):
        return None, x + dt * f(t + 0.5 * dt, x + 0.5 * dt * f(t, x)), None


def test_a_solver_of_your_own_is_synced_to_the_cuda_state():
    solver = _OwnMidpoint()
    x = torch.randn(8, 2, device=DEVICE)
    _, trajectory = odeint(lambda t, z: -z, x, torch.linspace(0, 1, 11, device=DEVICE), solver)
    assert trajectory.device == x.device
    assert [t.device for t in solver.seen] == [x.device] and solver.safety.device == x.device
    reference = odeint(lambda t, z: -z, x, torch.linspace(0, 1, 11, device=DEVICE), "midpoint")[1]
    torch.testing.assert_close(trajectory, reference)
