"""torchdyn's plotting helpers by their names (nodecore.utils): headless figures of the right shape."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure

from nodecore import NeuralODE, ToyDataset
from nodecore.utils import plot_2D_depth_trajectory, plot_2D_space_depth, plot_2D_state_space, plot_static_vector_field


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
    fig = plot_2D_depth_trajectory(s_span, trajectory, y, 20)
    assert isinstance(fig, Figure) and len([ax for ax in fig.axes if ax.get_xlabel()]) == 2
    assert _lines(fig) > 0


def test_state_space_and_space_depth_draw_the_first_n_lines(solved) -> None:
    _, s_span, trajectory, y = solved
    assert isinstance(plot_2D_state_space(trajectory, y, 16), Figure)
    fig = plot_2D_space_depth(s_span, trajectory, y, 16)
    assert len(fig.axes[0].lines) == 16 and fig.axes[0].get_zlabel() == "h1"


def test_static_vector_field_reads_the_field_of_a_neural_ode_or_a_sequential(solved) -> None:
    model, _, trajectory, _ = solved
    for target in (model, torch.nn.Sequential(torch.nn.Identity(), model)):
        fig = plot_static_vector_field(target, trajectory, N=12)
        assert isinstance(fig, Figure) and _lines(fig) > 0


def test_bad_values_are_named(solved) -> None:
    _, s_span, trajectory, y = solved
    with pytest.raises(ValueError, match="n_lines"):
        plot_2D_state_space(trajectory, y, 0)
    with pytest.raises(ValueError, match="ax is not supported"):
        plot_static_vector_field(solved[0], trajectory, ax=object())


def test_a_3d_dataset_is_drawn_one_colour_per_class_with_a_legend() -> None:
    from nodecore.utils import plot_3D_dataset

    X, y = ToyDataset().generate(200, "spheres", dim=3, seed=0)
    fig = plot_3D_dataset(X, y)
    (ax,) = fig.axes
    assert ax.name == "3d" and len(ax.collections) == 2
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["class 0", "class 1"]
    with pytest.raises(ValueError, match=r"points \[N, 3 or more\], got shape \(200, 2\)"):
        plot_3D_dataset(X[:, :2], y)


def test_a_star_import_hands_out_the_modules_torchdyn_tutorials_rely_on() -> None:
    names: dict = {}
    exec("from nodecore.utils import *\nfrom nodecore.models import *\nfrom nodecore.datasets import *", names)
    assert {"torch", "nn", "np", "plt", "mpl", "math", "CNF", "ToyDataset", "plot_3D_dataset"} <= set(names)
    assert names["nn"] is torch.nn and names["plt"].__name__ == "matplotlib.pyplot"

