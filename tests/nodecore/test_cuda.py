"""CUDA paths: skipped without a GPU (CI has none); run on a GPU machine with `pytest tests/nodecore/test_cuda.py`."""

import pytest
import torch
from torch import nn

from nodecore import SOLVER_NAMES, NeuralODE, ToyDataset, evaluate, load_model, model_config, save_checkpoint, train
from nodecore.architectures import MLPFieldSpec, build_field

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
