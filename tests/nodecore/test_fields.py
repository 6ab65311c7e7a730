"""Tests for nodecore.fields: VectorField's calling convention and counter, DepthCat, Augmenter."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from nodecore import Augmenter, DepthCat, NeuralODE, VectorField

F64 = torch.float64


class Autonomous(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return -x


class DepthVariant(nn.Module):
    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return t * x


class WithOptionalArg(nn.Module):
    def forward(self, x: Tensor, scale: float = 2.0) -> Tensor:
        return scale * x


class VarArgs(nn.Module):
    def forward(self, *args: Tensor) -> Tensor:
        return -args[-1]


class KeywordOnlyExtra(nn.Module):
    def forward(self, t: Tensor, x: Tensor, *, scale: float = 1.0) -> Tensor:
        return scale * t * x


def state() -> Tensor:
    return torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=F64)


# --------------------------------------------------------------------------------------------------
# VectorField: f(x) or f(t, x)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "takes_time"),
    [
        (Autonomous(), False),
        (DepthVariant(), True),
        (nn.Sequential(nn.Linear(2, 2), nn.Tanh()), False),
        (nn.Linear(2, 2), False),
        (WithOptionalArg(), False),  # a defaulted second argument is not t
        (VarArgs(), False),
        (KeywordOnlyExtra(), True),
        (lambda x: -x, False),
        (lambda t, x: t * x, True),
    ],
)
def test_detects_f_of_x_versus_f_of_t_x(field, takes_time: bool) -> None:
    assert VectorField(field).takes_time is takes_time


def test_autonomous_field_gets_x_only_and_depth_variant_gets_t() -> None:
    z = state()
    assert torch.equal(VectorField(Autonomous())(0.7, z), -z)
    assert torch.equal(VectorField(DepthVariant())(torch.tensor(0.5, dtype=F64), z), 0.5 * z)


@pytest.mark.parametrize("t", [0, 1, 0.25, torch.tensor(0.25, dtype=F64)])
def test_model_vf_accepts_a_python_number_for_t(t) -> None:
    model = NeuralODE(DepthVariant())
    z = state()
    out = model.vf(t, z)
    assert out.dtype == F64 and out.shape == z.shape
    assert torch.allclose(out, float(t) * z)


def test_depth_cat_field_accepts_a_python_number_for_t() -> None:
    model = NeuralODE(nn.Sequential(DepthCat(1), nn.Linear(3, 2)).to(F64))
    z = state()
    assert torch.equal(model.vf(0, z), model.vf(torch.tensor(0.0, dtype=F64), z))


def test_wrapping_a_vector_field_does_not_nest() -> None:
    inner = VectorField(DepthVariant())
    outer = VectorField(inner)
    assert outer.vf is inner.vf and outer.takes_time
    assert isinstance(NeuralODE(inner).vf.vf, DepthVariant)


def test_non_callable_is_refused() -> None:
    with pytest.raises(TypeError, match="nn.Module or callable, got str"):
        VectorField("not a field")  # type: ignore[arg-type]


def test_field_parameters_are_the_models() -> None:
    field = nn.Linear(2, 2)
    model = NeuralODE(field)
    assert [id(p) for p in model.parameters()] == [id(p) for p in field.parameters()]


# --------------------------------------------------------------------------------------------------
# Counting evaluations
# --------------------------------------------------------------------------------------------------


def test_nfe_counts_every_call_and_can_be_reset() -> None:
    model = NeuralODE(Autonomous(), solver="rk4", step_size=0.25)
    assert model.vf.nfe == 0
    model.vf(0, state())
    model.vf(1.0, state())
    assert model.vf.nfe == 2
    model(state(), torch.tensor([0.0, 1.0], dtype=F64))
    assert model.vf.nfe == 2 + 16  # 4 steps x 4 evaluations
    model.vf.nfe = 0
    assert model.vf.nfe == 0
    model(state(), torch.tensor([0.0, 1.0], dtype=F64))
    assert model.vf.nfe == 16 == model.stats.nfe_forward


def test_counter_belongs_to_the_wrapper() -> None:
    field = Autonomous()
    a, b = VectorField(field), VectorField(field)
    a(0, state())
    assert (a.nfe, b.nfe) == (1, 0)


# --------------------------------------------------------------------------------------------------
# DepthCat
# --------------------------------------------------------------------------------------------------


def depth_field(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(DepthCat(1), nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2)).to(F64)


def test_depth_cat_makes_the_field_depend_on_t() -> None:
    vf = VectorField(depth_field())
    assert not vf.takes_time  # nn.Sequential is called as f(x) ...
    z = state()
    at0, at1 = vf(0.0, z), vf(1.0, z)  # ... yet its output depends on t, through DepthCat
    assert at0.shape == at1.shape == z.shape
    assert not torch.allclose(at0, at1)
    assert torch.equal(vf(0.0, z), at0)  # and only on t: same t, same output


def test_depth_cat_appends_t_as_a_feature() -> None:
    layer = DepthCat(1)
    layer.t = 0.75
    z = state()
    out = layer(z)
    assert out.shape == (2, 3)
    assert torch.equal(out[:, :2], z)
    assert torch.equal(out[:, 2], torch.full((2,), 0.75, dtype=F64))


def test_depth_cat_along_another_dimension() -> None:
    layer = DepthCat(0)
    layer.t = torch.tensor(2.0)
    out = layer(torch.zeros(3, 4, dtype=F64))
    assert out.shape == (4, 4) and out.dtype == F64
    assert torch.equal(out[3], torch.full((4,), 2.0, dtype=F64))


def test_depth_cat_outside_a_vector_field_says_how_to_use_it() -> None:
    with pytest.raises(RuntimeError, match="DepthCat has no depth t"):
        DepthCat(1)(state())


def test_depth_cat_sees_the_solver_depths() -> None:
    """During a solve DepthCat gets each evaluation's t: the field below is dx/dt = t, read through DepthCat,
    so x(2) = x(0) + 2**2 / 2 = 2; rk4 integrates polynomials of degree <= 4 in t exactly."""

    class Pick(nn.Module):  # returns the appended depth as the derivative of every state dimension
        def forward(self, z: Tensor) -> Tensor:
            return z[:, -1:].expand(-1, z.shape[1] - 1)

    model = NeuralODE(nn.Sequential(DepthCat(1), Pick()), solver="rk4", step_size=0.5)
    _, trajectory = model(torch.zeros(3, 2, dtype=F64), torch.tensor([0.0, 2.0], dtype=F64))
    assert torch.allclose(trajectory[-1], torch.full((3, 2), 2.0, dtype=F64), atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Augmenter
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [1, 3, 5])
def test_augmenter_appends_zeros(dims: int) -> None:
    z = state()
    out = Augmenter(augment_idx=1, augment_dims=dims, order="last")(z)
    assert out.shape == (2, 2 + dims) and out.dtype == F64
    assert torch.equal(out[:, :2], z)
    assert torch.equal(out[:, 2:], torch.zeros(2, dims, dtype=F64))


def test_augmenter_default_is_five_zeros() -> None:
    assert Augmenter()(state()).shape == (2, 7)


def test_augmenter_with_a_learned_map() -> None:
    torch.manual_seed(0)
    extra = nn.Linear(2, 3).to(F64)
    layer = Augmenter(augment_idx=1, augment_dims=3, augment_func=extra, order="last")
    z = state()
    out = layer(z)
    assert out.shape == (2, 5)
    assert torch.equal(out[:, :2], z)
    assert torch.allclose(out[:, 2:], extra(z))
    assert any(p is extra.weight for p in layer.parameters())  # the map is trained with the model
    out.sum().backward()
    assert extra.weight.grad is not None


def test_augmented_state_flows_into_a_neural_ode() -> None:
    torch.manual_seed(0)
    field = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 5)).to(F64)
    augmented = Augmenter(1, 3, order="last")(state())
    _, trajectory = NeuralODE(field)(augmented, torch.tensor([0.0, 1.0], dtype=F64))
    assert trajectory.shape == (2, 2, 5)


@pytest.mark.parametrize(("kwargs", "match"), [({"augment_dims": 0}, "augment_dims must be an integer >= 1, got 0"),
                                               ({"order": "third"}, "unknown order 'third'")])
def test_augmenter_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Augmenter(**kwargs)
