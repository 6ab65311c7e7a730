"""nodecore.utils' torchdyn helpers use pyplot as torchdyn's do (headless here, on Agg).

torchdyn's ``torchdyn/utils.py`` (DiffEqML/torchdyn 307328b, unchanged to master 95cc74b): ``plot_2D_depth_trajectory``,
``plot_2D_state_space``, ``plot_2D_space_depth``, ``plot_static_vector_field``, ``plot_3D_dataset``,
``plot_2d_flows`` and ``plot_2d_boundary`` each open a new figure with ``plt.figure`` and return None;
``plot_traj_vf_1D`` draws with ``plt.contourf`` / ``plt.streamplot`` / ``plt.plot`` on the current axes and returns
``(S, X, U, V)``. Every figure stays open until ``plt.close``, as torchdyn's do.

Measured in a real kernel (ipykernel 7.4, matplotlib-inline, nbclient), a cell whose last line calls a function
that opens a pyplot figure shows 2 images when the function returns the figure (its value is displayed, then the
inline backend shows every open figure) and 1 when it returns None; so the helpers return None, like torchdyn's.
"""

from __future__ import annotations

import ast
import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.contour import ContourSet
from matplotlib.figure import Figure

from nodecore import NeuralODE, ToyDataset
from nodecore.nn import DepthCat
from nodecore.utils import (
    plot_2d_boundary,
    plot_2D_depth_trajectory,
    plot_2d_flows,
    plot_2D_space_depth,
    plot_2D_state_space,
    plot_3D_dataset,
    plot_static_vector_field,
    plot_traj_vf_1D,
)
from tests.nodecore._pyplot import agg_backend, no_open_figures  # noqa: F401  (autouse fixtures)

N_LINES = 12


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    torch.manual_seed(0)
    X, y = ToyDataset().generate(40, "moons", noise=0.1, seed=0)
    model = NeuralODE(torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)), "rk4")
    s_span = torch.linspace(0, 1, 9)
    with torch.no_grad():
        _, trajectory = model(X, s_span)
    field_1d = NeuralODE(torch.nn.Sequential(DepthCat(1), torch.nn.Linear(2, 8), torch.nn.Tanh(),
                                             torch.nn.Linear(8, 1)), "rk4")
    traj_1d = field_1d.trajectory(torch.linspace(-1, 1, 5)[:, None], s_span).detach()
    g = torch.linspace(-2, 2, 20)
    mesh = torch.stack(torch.meshgrid(g, g, indexing="ij"), dim=-1)
    X3, y3 = ToyDataset().generate(60, "spheres", dim=3, seed=0)
    return dict(X=X, y=y, model=model, s_span=s_span, trajectory=trajectory, field_1d=field_1d, traj_1d=traj_1d,
                mesh=mesh, X3=X3, y3=y3, classifier=torch.nn.Linear(2, 2))


def _segments(ax: Any) -> int:
    return sum(len(c.get_segments()) for c in ax.collections if isinstance(c, LineCollection)
               and not isinstance(c, ContourSet))


# name -> (call, check of the figure drawn: its axes, and which of them is left current)
NEW_FIGURE: dict[str, Callable[[dict[str, Any]], None]] = {
    "plot_2D_depth_trajectory": lambda d: plot_2D_depth_trajectory(d["s_span"], d["trajectory"], d["y"], N_LINES),
    "plot_2D_state_space": lambda d: plot_2D_state_space(d["trajectory"], d["y"], N_LINES),
    "plot_2D_space_depth": lambda d: plot_2D_space_depth(d["s_span"], d["trajectory"], d["y"], N_LINES),
    "plot_static_vector_field": lambda d: plot_static_vector_field(d["model"], d["trajectory"], N=15),
    "plot_3D_dataset": lambda d: plot_3D_dataset(d["X3"], d["y3"]),
    "plot_2d_flows": lambda d: plot_2d_flows(d["trajectory"], 3),
    "plot_2d_boundary": lambda d: plot_2d_boundary(d["classifier"], d["X"], d["y"], d["mesh"]),
}
ALL = {**NEW_FIGURE, "plot_traj_vf_1D": lambda d: plot_traj_vf_1D(d["field_1d"], d["s_span"], d["traj_1d"], "cpu",
                                                                   [-1, 1], 10)}


def _check_drawing(name: str, fig: Figure) -> None:
    """``fig`` holds what ``name`` draws, and pyplot's current axes is the one torchdyn's leaves current."""
    axes, current = fig.axes, plt.gca()
    if name == "plot_2D_depth_trajectory":  # two axes, one line per trajectory each; torchdyn's ax1 is current
        assert [_segments(ax) for ax in axes] == [N_LINES, N_LINES] and current is axes[1]
    elif name == "plot_2D_state_space":  # the trajectories and, per class drawn, start and end markers
        (ax,) = axes
        markers = [c for c in ax.collections if isinstance(c, PathCollection)]
        assert _segments(ax) == N_LINES and len(markers) >= 2 and len(markers) % 2 == 0
    elif name == "plot_2D_space_depth":
        (ax,) = axes
        assert ax.name == "3d" and len(ax.lines) == N_LINES
    elif name == "plot_static_vector_field":  # the field's axes (current) and its colorbar
        assert len(axes) == 2 and current is axes[0]
        assert _segments(axes[0]) > N_LINES  # streamlines plus the 40 trajectories
    elif name == "plot_3D_dataset":
        (ax,) = axes
        assert ax.name == "3d" and len(ax.collections) == 2
    elif name == "plot_2d_flows":  # torchdyn's plt.subplot(122) is current last
        assert [len(ax.lines) for ax in axes] == [3, 3] and current is axes[1]
    elif name == "plot_2d_boundary":  # the filled classes, their boundary, one scatter per class
        (ax,) = axes
        assert len([c for c in ax.collections if isinstance(c, ContourSet)]) == 2
        assert len([c for c in ax.collections if isinstance(c, PathCollection)
                    and not isinstance(c, ContourSet)]) == 2
    elif name == "plot_traj_vf_1D":  # speed contours, streamlines, one line per trajectory
        (ax,) = axes
        assert len(ax.lines) == 5 and _segments(ax) > 0 and any(isinstance(c, ContourSet) for c in ax.collections)
    assert current in axes


@pytest.mark.parametrize("name", NEW_FIGURE)
def test_each_helper_draws_on_a_new_current_pyplot_figure_and_returns_none(name: str, data) -> None:
    plt.figure()  # an open figure must not be drawn on: torchdyn's helper opens its own
    assert NEW_FIGURE[name](data) is None
    assert plt.get_fignums() == [1, 2]
    fig = plt.gcf()
    assert fig.number == 2 and fig.canvas.manager is not None  # pyplot's, so plt.show() and Jupyter see it
    _check_drawing(name, fig)
    assert plt.figure(1).axes == []


def test_traj_vf_1d_draws_on_the_current_axes_as_the_torchdyn_tutorial_uses_it(data) -> None:
    # torchdyn's m1b tutorial: plt.figure(figsize=(12, 4)), then plt.subplot(1, 2, 1 + i) before each call.
    fig = plt.figure(figsize=(12, 4))
    for i in range(2):
        plt.subplot(1, 2, 1 + i)
        result = ALL["plot_traj_vf_1D"](data)
        S, X, U, V = result
        assert result.figure is fig and S.shape == (10, 10)
    assert plt.get_fignums() == [1] and len(fig.axes) == 2
    for ax in fig.axes:
        assert len(ax.lines) == 5 and _segments(ax) > 0
    plt.close("all")
    ALL["plot_traj_vf_1D"](data)  # no figure open: one is made, as by torchdyn's plt.contourf
    assert plt.get_fignums() == [1]
    _check_drawing("plot_traj_vf_1D", plt.gcf())


def _ink(png: bytes | Path) -> float:
    """The fraction of a PNG's pixels that differ from its top-left (background) pixel."""
    image = mpimg.imread(io.BytesIO(png) if isinstance(png, bytes) else png)
    return float((np.abs(image - image[0, 0]).sum(axis=-1) > 1e-3).mean())


@pytest.mark.parametrize("name", ALL)
def test_plt_savefig_after_the_call_writes_the_drawing(name: str, data, tmp_path: Path) -> None:
    ALL[name](data)
    plt.savefig(tmp_path / "plot.png")  # torchdyn code: the helper, then plt.savefig
    assert _ink(tmp_path / "plot.png") > 0.02
    plt.figure()
    plt.savefig(tmp_path / "blank.png")
    assert _ink(tmp_path / "blank.png") == 0.0  # what plt.savefig wrote when the helpers drew outside pyplot


@pytest.mark.parametrize("name", NEW_FIGURE)
def test_two_calls_give_two_figures_each_with_its_drawing(name: str, data) -> None:
    NEW_FIGURE[name](data)
    NEW_FIGURE[name](data)
    assert plt.get_fignums() == [1, 2] and plt.gcf().number == 2
    _check_drawing(name, plt.figure(2))
    _check_drawing(name, plt.figure(1))  # (re-activated, so its axes is current again)


def test_open_figures_are_those_torchdyn_leaves_and_a_failed_call_leaves_none(data) -> None:
    # Like torchdyn's, each call leaves its figure open until plt.close (matplotlib warns past 20 open figures).
    for call in NEW_FIGURE.values():
        call(data)
    ALL["plot_traj_vf_1D"](data)  # on the current axes: the last figure's
    assert len(plt.get_fignums()) == len(NEW_FIGURE)
    plt.close("all")
    # Stricter than torchdyn (whose helpers can fail after plt.figure): a call that raises leaves no figure.
    bad = torch.zeros(3, 4)  # not a trajectory [T, B, D]
    failing = [
        lambda: plot_2D_depth_trajectory(data["s_span"][:-1], data["trajectory"], data["y"], N_LINES),
        lambda: plot_2D_state_space(bad, data["y"], N_LINES),
        lambda: plot_2D_space_depth(data["s_span"], bad, data["y"], N_LINES),
        lambda: plot_static_vector_field(lambda t, x: torch.zeros(len(x), 3), data["trajectory"], N=5),
        lambda: plot_3D_dataset(bad[:, :2], data["y"][:3]),
        lambda: plot_2d_flows(bad),
        lambda: plot_2d_boundary(torch.nn.Linear(2, 1), data["X"], data["y"], data["mesh"]),
        lambda: plot_traj_vf_1D(data["field_1d"], data["s_span"], bad, "cpu", [-1, 1], 10),
    ]
    for call in failing:
        with pytest.raises(ValueError):
            call()
    assert plt.get_fignums() == []


def _inline_images(cell: str, namespace: dict[str, Any]) -> int:
    """How many images a Jupyter cell shows under the inline backend, without a kernel.

    IPython displays the value of a last-line expression (an image if it is a Figure), then the inline backend
    shows and closes every open pyplot figure. This reproduces the measured counts: a call returning its pyplot
    figure shows 2 images, one returning None shows 1, one not on the last line shows 1.
    """
    tree = ast.parse(cell)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<cell>", "exec"), namespace)
    value = None if last is None else eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)
    shown = isinstance(value, Figure) + len(plt.get_fignums())
    plt.close("all")
    return shown


def test_a_notebook_cell_shows_each_drawing_once(data) -> None:
    namespace = {**data, **{name: globals()[name] for name in ALL}, "plt": plt,
                 "returns_its_figure": lambda: plt.figure()}
    assert _inline_images("returns_its_figure()", namespace) == 2  # the measured double display
    assert _inline_images("plot_2D_state_space(trajectory, y, 8)", namespace) == 1
    assert _inline_images("plot_2D_state_space(trajectory, y, 8)\nx = 1", namespace) == 1
    # torchdyn's m1a tutorial cell, and m1d's ten depth plots in one cell
    assert _inline_images("plot_2D_depth_trajectory(s_span, trajectory, y, 8)\n"
                          "plot_2D_state_space(trajectory, y, 8)\n"
                          "plot_2D_space_depth(s_span, trajectory, y, 8)", namespace) == 3
    assert _inline_images("\n".join(["plot_2D_depth_trajectory(s_span, trajectory, y, 8)"] * 10), namespace) == 10
    for name in ALL:
        assert _inline_images(f"{name}(**kwargs)", {**namespace, "kwargs": _kwargs_of(name, data)}) == 1, name


def _kwargs_of(name: str, data: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments (torchdyn's parameter names) that call helper ``name`` on ``data``."""
    calls = {
        "plot_2D_depth_trajectory": dict(s_span=data["s_span"], trajectory=data["trajectory"], yn=data["y"]),
        "plot_2D_state_space": dict(trajectory=data["trajectory"], yn=data["y"]),
        "plot_2D_space_depth": dict(s_span=data["s_span"], trajectory=data["trajectory"], yn=data["y"]),
        "plot_static_vector_field": dict(model=data["model"], trajectory=data["trajectory"], N=10),
        "plot_3D_dataset": dict(X=data["X3"], yn=data["y3"]),
        "plot_2d_flows": dict(trajectory=data["trajectory"]),
        "plot_2d_boundary": dict(model=data["classifier"], X=data["X"], y=data["y"], mesh=data["mesh"]),
        "plot_traj_vf_1D": dict(model=data["field_1d"], s_span=data["s_span"], traj=data["traj_1d"], device="cpu",
                                x_span=[-1, 1], n_grid=8),
    }
    return calls[name]


def _run(code: str, tmp_path: Path, **env: str) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "DISPLAY", "WAYLAND_DISPLAY")}
    clean.update(MPLCONFIGDIR=str(tmp_path / "mplconfig"), **env)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=clean, cwd=tmp_path)


def test_importing_the_helpers_leaves_pyplot_and_the_backend_alone(tmp_path: Path) -> None:
    _run(
        "import sys, matplotlib\n"
        "matplotlib.use('svg')\n"
        "import nodecore, nodecore.utils\n"
        "from nodecore.utils import plot_2d_flows\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "import torch, matplotlib.pyplot as plt\n"
        "plot_2d_flows(torch.randn(5, 3, 2))\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()  # the user's, even after a call\n"
        "plt.savefig('flows.png')\n",
        tmp_path)
    assert _ink(tmp_path / "flows.png") > 0.02


def test_without_a_display_the_helpers_draw_headless_on_agg(tmp_path: Path) -> None:
    _run(
        "import matplotlib, torch\n"
        "from nodecore.utils import plot_2D_state_space\n"
        "plot_2D_state_space(torch.randn(5, 8, 2).cumsum(0), torch.arange(8) % 2, 8)\n"
        "import matplotlib.pyplot as plt\n"
        "assert plt.get_backend().lower() == 'agg', plt.get_backend()\n"
        "plt.savefig('state.png')\n"
        "plt.show()  # a no-op on Agg\n",
        tmp_path)
    assert _ink(tmp_path / "state.png") > 0.02


def test_torchdyn_masters_n_samples_names_the_count_of_lines(data) -> None:
    for helper, args in [(plot_2D_depth_trajectory, (data["s_span"], data["trajectory"], data["y"])),
                         (plot_2D_state_space, (data["trajectory"], data["y"]))]:
        helper(*args, n_samples=3)
        by_name = _segments(plt.gca()) + sum(len(ax.lines) for ax in plt.gcf().axes)
        helper(*args, 3)
        by_position = _segments(plt.gca()) + sum(len(ax.lines) for ax in plt.gcf().axes)
        assert by_name == by_position > 0
        with pytest.raises(ValueError, match="n_lines=5 and n_samples=3"):
            helper(*args, 5, n_samples=3)
    plt.close("all")


def test_the_static_vector_field_is_evaluated_at_torchdyns_positional_t(data) -> None:
    seen: list[float] = []

    def field(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        seen.append(float(t))
        return torch.stack([-x[:, 1], x[:, 0]], dim=1)

    plot_static_vector_field(field, data["trajectory"], 0.75, 8)  # torchdyn's order: model, trajectory, t, N
    assert seen == [0.75]
    plt.close("all")


@pytest.mark.parametrize("name", ["plot_static_vector_field", "plot_2d_boundary", "plot_traj_vf_1D"])
def test_a_bare_colorbar_after_a_colour_mapped_helper_is_that_scales(name: str, data) -> None:
    """pyplot's current image is the helper's colour scale (a filled contour; the field's speed-coloured
    streamlines), as after ``plt.contourf``: torchdyn code that calls ``plt.colorbar()`` next gets that scale's
    colorbar (before, pyplot raised: no mappable)."""
    ALL[name](data)
    image = plt.gci()
    if name == "plot_static_vector_field":
        assert isinstance(image, LineCollection) and image.get_array() is not None
    else:
        assert isinstance(image, ContourSet) and image.filled
    assert image.axes is plt.gca()
    axes = len(plt.gcf().axes)
    colorbar = plt.colorbar()
    assert colorbar.mappable is image and len(plt.gcf().axes) == axes + 1
