"""torchdyn's ``torchdyn.utils`` plotting helpers by their names, drawn with nodecore's plots.

Each returns a matplotlib ``Figure`` built without pyplot (headless: save it with
:func:`nodecore.plotting.save_figure` or ``fig.savefig``); torchdyn's draw on pyplot's current figure.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from nodecore import plotting
from nodecore._checks import integer

__all__ = ["plot_2D_depth_trajectory", "plot_2D_space_depth", "plot_2D_state_space", "plot_3D_dataset",
           "plot_static_vector_field"]
# torchdyn's `from torchdyn.utils import *` also hands out the modules it imported (it has no __all__), and its
# tutorials use them without importing them; these names keep that code running. Only a star import of
# nodecore.utils loads pyplot: `import nodecore` does not.
STAR_IMPORT_MODULES = ("torch", "nn", "np", "mpl", "plt")
__all__ += STAR_IMPORT_MODULES


def __getattr__(name: str) -> Any:
    if name == "plt":
        import matplotlib.pyplot as plt

        return plt
    if name == "mpl":
        import matplotlib as mpl

        return mpl
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "mpl", "plt"])


def _first(trajectory: Any, labels: Any, n_lines: int) -> tuple[np.ndarray, np.ndarray]:
    traj = plotting._as_trajectory(trajectory, min_dims=2)
    n = min(integer("n_lines", n_lines, minimum=1), traj.shape[1])
    return traj[:, :n], plotting._as_labels(labels, traj.shape[1])[:n]


def plot_2D_depth_trajectory(s_span: Any, trajectory: Any, yn: Any, n_lines: int = 128) -> Figure:
    """Dimensions 0 and 1 of the first ``n_lines`` trajectories ``[T, B, D]`` against depth, coloured by ``yn``."""
    traj, labels = _first(trajectory, yn, n_lines)
    return plotting.plot_trajectories_depth(traj[..., :2], s_span, labels, max_points=traj.shape[1])


def plot_2D_state_space(trajectory: Any, yn: Any, n_lines: int = 128) -> Figure:
    """The first ``n_lines`` trajectories in the (h0, h1) plane, coloured by ``yn``."""
    traj, labels = _first(trajectory, yn, n_lines)
    return plotting.plot_state_space(traj, labels, max_points=traj.shape[1])


def plot_2D_space_depth(s_span: Any, trajectory: Any, yn: Any, n_lines: int = 128) -> Figure:
    """The first ``n_lines`` trajectories as curves in (depth, h0, h1) space, coloured by ``yn``."""
    traj, labels = _first(trajectory, yn, n_lines)
    depth = plotting._to_numpy(s_span).reshape(-1)
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot(111, projection="3d")
    for i in range(traj.shape[1]):
        color = plotting.CLASS_COLORS[int(labels[i]) % len(plotting.CLASS_COLORS)]
        ax.plot(depth, traj[:, i, 0], traj[:, i, 1], color=color, alpha=0.3)
    ax.set_xlabel("depth t")
    ax.set_ylabel("h0")
    ax.set_zlabel("h1")
    ax.set_title("flows in space and depth")
    return fig


def plot_static_vector_field(model: nn.Module, trajectory: Any, N: int = 50, device: str | torch.device | None = None,
                             ax: Any = None) -> Figure:
    """The learned field on an ``N x N`` grid around ``trajectory``, with the trajectories on top.

    Args:
        model: a ``NeuralODE`` (its field is drawn), or a module that contains one as ``model[1]`` (torchdyn's
            ``nn.Sequential(Augmenter, NeuralODE)`` pattern), or a field ``f(t, x)`` itself.
        device: accepted for torchdyn compatibility; the field is evaluated where its parameters are.
        ax: not supported (nodecore builds its own figure); pass None.
    """
    if ax is not None:
        raise ValueError("ax is not supported: plot_static_vector_field returns a new Figure")
    field = getattr(model, "vf", None)
    if field is None and isinstance(model, nn.Sequential) and len(model) > 1:
        field = getattr(model[1], "vf", None)
    field = field if field is not None else model
    xlim, ylim = plotting.vector_field_limits(trajectory)
    return plotting.plot_vector_field(field, xlim=xlim, ylim=ylim, n_points=integer("N", N, minimum=2),
                                      trajectory=trajectory)


def plot_3D_dataset(X: Any, yn: Any) -> Figure:
    """The points ``X`` ``[N, 3]`` (the first three features) as a 3-D scatter, coloured by class ``yn`` ``[N]``."""
    points = plotting._to_numpy(X)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"plot_3D_dataset needs points [N, 3 or more], got shape {tuple(points.shape)}")
    labels = plotting._as_labels(yn, points.shape[0])
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot(111, projection="3d")
    for label in np.unique(labels):
        mask = labels == label
        ax.scatter(points[mask, 0], points[mask, 1], points[mask, 2], s=6, alpha=0.6,
                   color=plotting.CLASS_COLORS[int(label) % len(plotting.CLASS_COLORS)], label=f"class {int(label)}")
    ax.set_xlabel("x0")
    ax.set_ylabel("x1")
    ax.set_zlabel("x2")
    ax.legend(loc="upper left")
    return fig
