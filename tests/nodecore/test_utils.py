"""torchdyn's plotting helpers by their names (nodecore.utils): what each draws on its pyplot figure.

How they use pyplot (which figure, what they return, what stays open) is tested in ``test_utils_pyplot.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

import nodecore.numerics
from nodecore import NeuralODE, ToyDataset
from nodecore.nn import DataControl, DepthCat
from nodecore.utils import (
    plot_2d_boundary,
    plot_2D_depth_trajectory,
    plot_2d_flows,
    plot_2D_space_depth,
    plot_2D_state_space,
    plot_static_vector_field,
    plot_traj_vf_1D,
)
from tests.nodecore._pyplot import agg_backend, no_open_figures  # noqa: F401  (autouse fixtures)


def _drawn(helper: Callable[..., Any], *args: Any, **kwargs: Any) -> Figure:
    """Call a helper that, like torchdyn's, draws on a new pyplot figure and returns None; return that figure."""
    before = set(plt.get_fignums())
    assert helper(*args, **kwargs) is None
    (new,) = set(plt.get_fignums()) - before
    assert plt.gcf().number == new
    return plt.gcf()


@pytest.fixture(scope="module")
def solved() -> tuple[NeuralODE, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    X, y = ToyDataset().generate(64, "moons", noise=0.1, seed=0)
    model = NeuralODE(torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)), "rk4")
    s_span = torch.linspace(0, 1, 11)
    with torch.no_grad():
        _, trajectory = model(X, s_span)
    return model, s_span, trajectory, y


def _lines(fig: Figure) -> int:
    return sum(len(ax.lines) + len(ax.collections) for ax in fig.axes)


def test_depth_trajectories_draw_two_dimensions_of_n_lines(solved) -> None:
    _, s_span, trajectory, y = solved
    fig = _drawn(plot_2D_depth_trajectory, s_span, trajectory, y, 20)
    assert len([ax for ax in fig.axes if ax.get_xlabel()]) == 2
    assert _lines(fig) > 0


def test_state_space_and_space_depth_draw_the_first_n_lines(solved) -> None:
    _, s_span, trajectory, y = solved
    assert _lines(_drawn(plot_2D_state_space, trajectory, y, 16)) > 0
    fig = _drawn(plot_2D_space_depth, s_span, trajectory, y, 16)
    assert len(fig.axes[0].lines) == 16 and fig.axes[0].get_zlabel() == "h1"


def test_static_vector_field_reads_the_field_of_a_neural_ode_or_a_sequential(solved) -> None:
    model, _, trajectory, _ = solved
    for target in (model, torch.nn.Sequential(torch.nn.Identity(), model)):
        assert _lines(_drawn(plot_static_vector_field, target, trajectory, N=12)) > 0


def test_bad_values_are_named(solved) -> None:
    _, s_span, trajectory, y = solved
    with pytest.raises(ValueError, match="n_lines"):
        plot_2D_state_space(trajectory, y, 0)
    with pytest.raises(ValueError, match="ax is not supported"):
        plot_static_vector_field(solved[0], trajectory, ax=object())
    assert plt.get_fignums() == []  # a call that fails leaves no figure behind


def test_a_3d_dataset_is_drawn_one_colour_per_class_with_a_legend() -> None:
    from nodecore.utils import plot_3D_dataset

    X, y = ToyDataset().generate(200, "spheres", dim=3, seed=0)
    (ax,) = _drawn(plot_3D_dataset, X, y).axes
    assert ax.name == "3d" and len(ax.collections) == 2
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["class 0", "class 1"]
    with pytest.raises(ValueError, match=r"points \[N, 3 or more\], got shape \(200, 2\)"):
        plot_3D_dataset(X[:, :2], y)


def test_a_star_import_hands_out_the_modules_torchdyn_tutorials_rely_on() -> None:
    names: dict = {}
    exec("from nodecore.utils import *\nfrom nodecore.models import *\nfrom nodecore.datasets import *", names)
    assert {"torch", "nn", "np", "plt", "mpl", "math", "CNF", "ToyDataset", "plot_3D_dataset", "plot_traj_vf_1D",
            "plot_2d_flows", "plot_2d_boundary"} <= set(names)
    assert names["nn"] is torch.nn and names["plt"].__name__ == "matplotlib.pyplot"
    # what torchdyn's models and datasets hand out besides their own names (all but pytorch_lightning's `pl`)
    assert names["Tensor"] is torch.Tensor and names["grad"] is torch.autograd.grad
    assert names["jacobian"] is torch.autograd.functional.jacobian and names["hessian"].__name__ == "hessian"
    assert names["partial"] is functools.partial and names["torchsde"].__name__ == "torchsde"
    assert names["odeint"] is nodecore.numerics.odeint



# --------------------------------------------------------------------------- helpers of the tests below
def _streamline_steps(ax) -> tuple[np.ndarray, np.ndarray]:
    """Midpoints ``[K, 2]`` and directions ``[K, 2]`` of every step of the axes' streamlines (nonzero steps)."""
    (lines,) = [c for c in ax.collections if isinstance(c, LineCollection)][:1]
    pairs = np.concatenate([np.stack([p[:-1], p[1:]], axis=1) for p in lines.get_segments() if len(p) > 1])
    step = pairs[:, 1] - pairs[:, 0]
    keep = np.hypot(step[:, 0], step[:, 1]) > 1e-9
    return pairs[keep].mean(axis=1), step[keep]


def _sin_angle(step: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """|sin| of the angle between each streamline step and the field's direction there."""
    cross = step[:, 0] * direction[:, 1] - step[:, 1] * direction[:, 0]
    return np.abs(cross) / (np.linalg.norm(step, axis=1) * np.linalg.norm(direction, axis=1))


def _filled(ax, filled: bool):
    (contours,) = [c for c in ax.collections if getattr(c, "filled", None) is filled]
    return contours


def test_static_vector_field_streamlines_follow_the_models_field() -> None:
    field = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        field.weight.copy_(torch.tensor([[-0.5, 1.0], [-1.0, -0.5]]))  # a stable spiral: dh = A h
    trajectory = torch.tensor([[[-2.0, -2.0]], [[2.0, 2.0]]])
    mid, step = _streamline_steps(_drawn(plot_static_vector_field, NeuralODE(field, "rk4"), trajectory, N=25).axes[0])
    A = field.weight.detach().numpy().astype(np.float64)
    far = np.linalg.norm(mid, axis=1) > 0.25  # near the fixed point at 0 one step turns a large angle
    assert far.sum() > 100
    assert _sin_angle(step[far], mid[far] @ A.T).max() < 0.05
    assert _sin_angle(step[far], mid[far] @ A).max() > 0.5  # the transposed field would not fit


# ----------------------------------------------------------------------------------------- plot_2d_flows
def test_2d_flows_draw_dimension_0_and_1_of_the_first_num_flows_against_the_step() -> None:
    trajectory = torch.randn(7, 5, 3)
    fig = _drawn(plot_2d_flows, trajectory, 3, figsize=(6, 3), alpha=0.5)
    assert tuple(fig.get_size_inches()) == (6.0, 3.0)
    assert [ax.get_title() for ax in fig.axes] == ["Dimension 0", "Dimension 1"]
    for d, (ax, color) in enumerate(zip(fig.axes, ("red", "blue"))):
        assert len(ax.lines) == 3
        for i, line in enumerate(ax.lines):
            np.testing.assert_array_equal(line.get_xdata(), np.arange(7))
            np.testing.assert_allclose(line.get_ydata(), trajectory[:, i, d].numpy())
            assert to_rgba(line.get_color()) == to_rgba(color) and line.get_alpha() == 0.5
    assert [len(ax.lines) for ax in _drawn(plot_2d_flows, trajectory).axes] == [2, 2]  # torchdyn's num_flows=2


def test_2d_flows_name_bad_values() -> None:
    with pytest.raises(ValueError, match=r"num_flows must be an integer in \[1, 5\], got 6"):
        plot_2d_flows(torch.randn(7, 5, 2), 6)
    with pytest.raises(ValueError, match=r"D >= 2; got \(7, 5, 1\)"):
        plot_2d_flows(torch.randn(7, 5, 1))
    with pytest.raises(ValueError, match=r"figsize must be \(width, height\) in inches, got 8"):
        plot_2d_flows(torch.randn(7, 5, 2), figsize=8)
    with pytest.raises(ValueError, match=r"alpha must be a finite number in \[0, 1\], got 2"):
        plot_2d_flows(torch.randn(7, 5, 2), alpha=2)
    assert plt.get_fignums() == []


# -------------------------------------------------------------------------------------- plot_2d_boundary
def _linear_classifier() -> torch.nn.Linear:
    """Logits whose class-1 minus class-0 margin is ``x0 + 2 x1 - 0.3``: the boundary is that line."""
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 2.0]]))
        model.bias.copy_(torch.tensor([0.0, -0.3]))
    return model


def _margin(points: np.ndarray) -> np.ndarray:
    return points[:, 0] + 2 * points[:, 1] - 0.3


@pytest.mark.parametrize("indexing", ["ij", "xy"])
def test_2d_boundary_separates_the_classes_of_a_linear_classifier_in_data_coordinates(indexing: str) -> None:
    g = torch.linspace(-1, 1, 41)  # spacing h = 0.05
    mesh = torch.stack(torch.meshgrid(g, g, indexing=indexing), dim=-1)
    X = torch.rand(300, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = torch.as_tensor(_margin(X.numpy()) > 0).long()
    (ax,) = _drawn(plot_2d_boundary, _linear_classifier(), X, y, mesh).axes
    (boundary,) = _filled(ax, False).get_paths()
    # The drawn boundary lies on x0 + 2 x1 = 0.3, to half a grid step times the margin's steepest slope (2).
    assert len(boundary.vertices) > 20
    assert np.abs(_margin(boundary.vertices)).max() <= 0.5 * 0.05 * 2 + 1e-5
    # The filled class-1 region holds every sample clearly on class 1's side and none clearly on class 0's.
    regions = _filled(ax, True)
    assert regions.cmap.name == "winter" and list(regions.levels) == [-0.5, 0.5, 1.5]
    margin = _margin(X.numpy())
    assert regions.get_paths()[1].contains_points(X.numpy()[margin > 0.1]).all()
    assert not regions.get_paths()[1].contains_points(X.numpy()[margin < -0.1]).any()
    # Each class's samples are scattered, in its own colour.
    scatters = [c for c in ax.collections if c not in (regions, _filled(ax, False))]
    for c, points in enumerate(scatters):
        np.testing.assert_allclose(points.get_offsets(), X.numpy()[y.numpy() == c])
    assert len(scatters) == 2 and not np.allclose(scatters[0].get_facecolor(), scatters[1].get_facecolor())


def test_2d_boundary_name_bad_values() -> None:
    g = torch.linspace(-1, 1, 5)
    mesh = torch.stack(torch.meshgrid(g, g, indexing="ij"), dim=-1)
    X, y = torch.zeros(4, 2), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"mesh must be a grid of points \[H, W, 2\].*got shape \(25, 2\)"):
        plot_2d_boundary(_linear_classifier(), X, y, mesh.reshape(-1, 2))
    with pytest.raises(ValueError, match=r"logits \[25, C >= 2\], got \(25, 1\)"):
        plot_2d_boundary(torch.nn.Linear(2, 1), X, y, mesh)
    with pytest.raises(ValueError, match=r"X must be points \[N, 2\], got shape \(4, 3\)"):
        plot_2d_boundary(_linear_classifier(), torch.zeros(4, 3), y, mesh)
    with pytest.raises(ValueError, match=r"num_classes must be an integer >= 1, got 0"):
        plot_2d_boundary(_linear_classifier(), X, y, mesh, 0)
    assert plt.get_fignums() == []


# --------------------------------------------------------------------------------------- plot_traj_vf_1D
class _DepthMinusState(torch.nn.Module):
    """``f(s, h) = s - h``: a 1-D field whose value at every grid point is known."""

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return t - x


def test_traj_vf_1d_returns_torchdyns_grid_and_draws_the_field_at_its_points() -> None:
    s_span = torch.linspace(0, 2, 9)
    traj = torch.randn(9, 4, 1)
    result = plot_traj_vf_1D(_DepthMinusState(), s_span, traj, "cpu", [-1, 1], 20)
    S, X, U, V = result  # torchdyn's (S, X, U, V)
    ss, xx = torch.linspace(0, 2, 20), torch.linspace(-1, 1, 20)
    torch.testing.assert_close(S, ss[:, None].expand(20, 20))
    torch.testing.assert_close(X, xx[None, :].expand(20, 20))
    torch.testing.assert_close(U, torch.ones(20, 20))
    torch.testing.assert_close(V, S - X)
    assert result.figure is plt.gcf()  # drawn on pyplot's current axes, as torchdyn's is
    (ax,) = result.figure.axes
    speed = _filled(ax, True)
    assert speed.cmap.name == "winter" and speed.get_alpha() == 0.7
    assert speed.zmin == pytest.approx(torch.sqrt(1 + V**2).min().item())
    assert speed.zmax == pytest.approx(torch.sqrt(1 + V**2).max().item())
    # Every streamline step points along (ds, dh) = (1, s - h), not along the transposed (1, h - s).
    mid, step = _streamline_steps(ax)
    assert len(step) > 100
    assert _sin_angle(step, np.stack([np.ones(len(mid)), mid[:, 0] - mid[:, 1]], axis=1)).max() < 0.05
    assert _sin_angle(step, np.stack([np.ones(len(mid)), mid[:, 1] - mid[:, 0]], axis=1)).max() > 0.5
    # The trajectories' dimension 0 against s_span, in torchdyn's orange at alpha 0.1.
    assert len(ax.lines) == 4
    for i, line in enumerate(ax.lines):
        np.testing.assert_allclose(line.get_xdata(), s_span.numpy())
        np.testing.assert_allclose(line.get_ydata(), traj[:, i, 0].numpy())
        assert to_rgba(line.get_color()) == to_rgba("orange") and line.get_alpha() == 0.1


def test_traj_vf_1d_reads_a_neural_odes_field_as_the_torchdyn_tutorial_calls_it() -> None:
    torch.manual_seed(0)
    model = NeuralODE(torch.nn.Sequential(DepthCat(1), torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)),
                      "rk4")
    t_span = torch.linspace(0, 1, 11)
    traj = model.trajectory(torch.linspace(-1, 1, 6)[:, None], t_span)
    result = plot_traj_vf_1D(model, t_span, traj.detach(), n_grid=12, x_span=[-1, 1], device="cpu")
    S, X, _, V = result
    with torch.no_grad():
        net = model.vf.vf[1:]  # the layers after DepthCat, fed (h, s) by hand
        expected = torch.stack([net(torch.cat([X[i, :, None], S[i, :, None]], 1))[:, 0] for i in range(12)])
    torch.testing.assert_close(V, expected)
    assert len(result.figure.axes[0].lines) == 6 and result.figure.axes[0].get_xlabel() == "depth $s$"
    plt.figure()  # a fresh current axes: the call draws on the current one, as torchdyn's does
    assert len(plot_traj_vf_1D(model, t_span, None, "cpu", [-1, 1], 8).figure.axes[0].lines) == 0


def test_traj_vf_1d_names_bad_values() -> None:
    s_span = torch.linspace(0, 1, 5)
    field = _DepthMinusState()
    with pytest.raises(ValueError, match=r"x_span must run from low to high .*got \[1.0, -1.0\]"):
        plot_traj_vf_1D(field, s_span, None, "cpu", [1, -1], 10)
    with pytest.raises(ValueError, match=r"s_span must run from low to high"):
        plot_traj_vf_1D(field, s_span.flip(0), None, "cpu", [-1, 1], 10)
    with pytest.raises(ValueError, match=r"n_grid must be an integer >= 2, got 1"):
        plot_traj_vf_1D(field, s_span, None, "cpu", [-1, 1], 1)
    with pytest.raises(ValueError, match=r"traj must have one state per depth of s_span \(5\), got shape \(4, 2, 1\)"):
        plot_traj_vf_1D(field, s_span, torch.zeros(4, 2, 1), "cpu", [-1, 1], 10)
    with pytest.raises(ValueError, match=r"must map states \[10, 1\] to \[10, 1\], got \(10, 2\)"):
        plot_traj_vf_1D(lambda t, x: torch.cat([x, x], 1), s_span, None, "cpu", [-1, 1], 10)
    with pytest.raises(ValueError, match=r"1-D states h of shape \(10, 1\)"):  # a field built for 2-D states
        plot_traj_vf_1D(NeuralODE(torch.nn.Linear(2, 2), "rk4"), s_span, None, "cpu", [-1, 1], 10)
    controlled = NeuralODE(torch.nn.Sequential(DataControl(), torch.nn.Linear(2, 1)), "rk4")
    with pytest.raises(ValueError, match="data-controlled field"):
        plot_traj_vf_1D(controlled, s_span, None, "cpu", [-1, 1], 10)
    with pytest.raises(ValueError, match=r"traj_alpha must be a finite number in \[0, 1\], got -0.1"):
        plot_traj_vf_1D(field, s_span, None, "cpu", [-1, 1], 10, traj_alpha=-0.1)
    assert plt.get_fignums() == []  # each check fails before anything is drawn
