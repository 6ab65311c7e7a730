"""torchdyn's ``torchdyn.utils`` plotting helpers, drawn on pyplot figures as torchdyn's are.

Where torchdyn's helper opens a new pyplot figure, nodecore's does too (drawn with nodecore's plots) and leaves
it current, so ``plt.gcf()``, ``plt.savefig``, ``plt.show()`` and Jupyter's inline display work on it as they
do with torchdyn; ``plot_traj_vf_1D`` draws on pyplot's current axes, as torchdyn's does. Like torchdyn's they
return None (``plot_traj_vf_1D``: torchdyn's ``(S, X, U, V)``): a figure returned as a cell's last value would
be shown twice by Jupyter. Each new figure stays open until closed (``plt.close``), as with torchdyn. pyplot is
imported on the first call, so importing this module leaves it and the backend alone; without a display
matplotlib picks its headless Agg backend. Array inputs may be tensors (any device, with or without grad) or
numpy arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
import torch
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from torch import Tensor, nn

from nodecore import plotting
from nodecore._checks import integer, number, positive
from nodecore._shapes import explained_shapes
from nodecore.fields import VectorField

__all__ = ["FieldGrid1D", "plot_2D_depth_trajectory", "plot_2D_space_depth", "plot_2D_state_space", "plot_2d_boundary",
           "plot_2d_flows", "plot_3D_dataset", "plot_static_vector_field", "plot_traj_vf_1D"]


def _pyplot() -> Any:
    """``matplotlib.pyplot``, imported on first use: importing nodecore never loads it."""
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def _new_pyplot_figure(figsize: tuple[float, float], *, layout: str | None = "constrained") -> Iterator[Figure]:
    """A new pyplot figure (current, as ``plt.figure`` leaves it) to draw on; closed again if drawing fails."""
    plt = _pyplot()
    fig = plt.figure(figsize=figsize, layout=layout)
    try:
        yield fig
    except BaseException:
        plt.close(fig)
        raise


def _make_colour_scale_current(fig: Figure) -> None:
    """Make ``fig``'s colour-mapped drawing pyplot's current image (its axes current), as ``plt.contourf`` would:
    a bare ``plt.colorbar()`` after the helper then draws that scale's colorbar, as after torchdyn's. The first
    filled contour is taken, else the first collection that maps values to colours (speed-coloured streamlines).
    """
    from matplotlib.contour import ContourSet

    plt = _pyplot()
    mapped = [(ax, c) for ax in fig.axes for c in ax.collections if c.get_array() is not None]
    filled = [(ax, c) for ax, c in mapped if isinstance(c, ContourSet) and c.filled]
    if filled or mapped:
        ax, artist = (filled or mapped)[0]
        plt.sca(ax)
        plt.sci(artist)


def _field_of(model: Any) -> Any:
    """The field inside ``model``: a ``NeuralODE``'s ``.vf``, that of ``model[1]`` (torchdyn's
    ``nn.Sequential(Augmenter, NeuralODE)``), or ``model`` itself."""
    field = getattr(model, "vf", None)
    if field is None and isinstance(model, nn.Sequential) and len(model) > 1:
        field = getattr(model[1], "vf", None)
    return field if field is not None else model


def _figsize(figsize: Any) -> tuple[float, float]:
    try:
        width, height = figsize
    except (TypeError, ValueError):
        raise ValueError(f"figsize must be (width, height) in inches, got {figsize!r}") from None
    return positive("figsize width", width), positive("figsize height", height)


def _alpha(name: str, value: object) -> float:
    return number(name, value, minimum=0, maximum=1)


def _span(name: str, values: Any) -> tuple[float, float]:
    """``(first, last)`` of a 1-D span, which must be finite and increase."""
    span = plotting._to_numpy(values).astype(np.float64).reshape(-1)
    if span.size < 2 or not np.isfinite(span[[0, -1]]).all() or not span[0] < span[-1]:
        raise ValueError(f"{name} must run from low to high (first < last, both finite), got {span.tolist()}")
    return float(span[0]), float(span[-1])


N_LINES = 128  # torchdyn's default count of trajectories drawn


def _first(trajectory: Any, labels: Any, n_lines: int, n_samples: int | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n_lines`` trajectories and their labels; ``n_samples`` is the same count by torchdyn master's
    name for it."""
    if n_samples is not None:
        if n_lines != N_LINES and n_lines != n_samples:
            raise ValueError(f"n_lines={n_lines!r} and n_samples={n_samples!r} name the same count: give one")
        n_lines = n_samples
    traj = plotting._as_trajectory(trajectory, min_dims=2)
    n = min(integer("n_lines", n_lines, minimum=1), traj.shape[1])
    return traj[:, :n], plotting._as_labels(labels, traj.shape[1])[:n]


def plot_2D_depth_trajectory(s_span: Any, trajectory: Any, yn: Any, n_lines: int = N_LINES, *,
                             n_samples: int | None = None) -> None:
    """Dimensions 0 and 1 of the first ``n_lines`` trajectories ``[T, B, D]`` against depth, coloured by ``yn``.

    Drawn on a new pyplot figure (two axes), left current; returns None, as torchdyn's does. ``n_samples`` is
    torchdyn master's name for ``n_lines`` (so are the next two helpers').
    """
    traj, labels = _first(trajectory, yn, n_lines, n_samples)
    with _new_pyplot_figure((8.0, 5.0)) as fig:  # nodecore.plotting's own size for two dimensions
        plotting.plot_trajectories_depth(traj[..., :2], s_span, labels, max_points=traj.shape[1], figure=fig)


def plot_2D_state_space(trajectory: Any, yn: Any, n_lines: int = N_LINES, *,
                        n_samples: int | None = None) -> None:
    """The first ``n_lines`` trajectories in the (h0, h1) plane, coloured by ``yn``.

    Drawn on a new pyplot figure (one axes), left current; returns None, as torchdyn's does.
    """
    traj, labels = _first(trajectory, yn, n_lines, n_samples)
    with _new_pyplot_figure((7.5, 6.0)) as fig:  # nodecore.plotting's own size
        plotting.plot_state_space(traj, labels, max_points=traj.shape[1], figure=fig)


def plot_2D_space_depth(s_span: Any, trajectory: Any, yn: Any, n_lines: int = N_LINES, *,
                        n_samples: int | None = None) -> None:
    """The first ``n_lines`` trajectories as curves in (depth, h0, h1) space, coloured by ``yn``.

    Drawn on a new pyplot figure (one 3-D axes), left current; returns None, as torchdyn's does.
    """
    traj, labels = _first(trajectory, yn, n_lines, n_samples)
    depth = plotting._to_numpy(s_span).reshape(-1)
    with _new_pyplot_figure((6.0, 5.0), layout=None) as fig:
        ax = fig.add_subplot(111, projection="3d")
        for i in range(traj.shape[1]):
            color = plotting.CLASS_COLORS[int(labels[i]) % len(plotting.CLASS_COLORS)]
            ax.plot(depth, traj[:, i, 0], traj[:, i, 1], color=color, alpha=0.3)
        ax.set_xlabel("depth t")
        ax.set_ylabel("h0")
        ax.set_zlabel("h1")
        ax.set_title("flows in space and depth")


def plot_static_vector_field(model: nn.Module, trajectory: Any, t: float = 0.0, N: int = 50,
                             device: str | torch.device | None = None, ax: Any = None) -> None:
    """The learned field on an ``N x N`` grid around ``trajectory``, with the trajectories on top.

    Drawn on a new pyplot figure (the plot's axes, left current, and its colorbar); returns None, as torchdyn's
    does.

    Args:
        model: a ``NeuralODE`` (its field is drawn), or a module that contains one as ``model[1]`` (torchdyn's
            ``nn.Sequential(Augmenter, NeuralODE)`` pattern), or a field ``f(t, x)`` itself.
        t: the depth the field is evaluated at (torchdyn's ``t``).
        device: accepted for torchdyn compatibility; the field is evaluated where its parameters are.
        ax: not supported (like torchdyn's, it draws on a new figure of its own); pass None.
    """
    if ax is not None:
        raise ValueError("ax is not supported: plot_static_vector_field draws on a new pyplot figure, as "
                         "torchdyn's does")
    field = _field_of(model)
    xlim, ylim = plotting.vector_field_limits(trajectory)
    n_points = integer("N", N, minimum=2)
    with _new_pyplot_figure((8.5, 6.0)) as fig:  # nodecore.plotting's own size
        plotting.plot_vector_field(field, xlim=xlim, ylim=ylim, n_points=n_points, t=number("t", t),
                                   trajectory=trajectory, figure=fig)
        _make_colour_scale_current(fig)


def plot_3D_dataset(X: Any, yn: Any) -> None:
    """The points ``X`` ``[N, 3]`` (the first three features) as a 3-D scatter, coloured by class ``yn`` ``[N]``.

    Drawn on a new pyplot figure (one 3-D axes, one scatter per class), left current; returns None, as
    torchdyn's does.
    """
    points = plotting._to_numpy(X)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"plot_3D_dataset needs points [N, 3 or more], got shape {tuple(points.shape)}")
    labels = plotting._as_labels(yn, points.shape[0])
    with _new_pyplot_figure((6.0, 5.0), layout=None) as fig:
        ax = fig.add_subplot(111, projection="3d")
        for label in np.unique(labels):
            mask = labels == label
            ax.scatter(points[mask, 0], points[mask, 1], points[mask, 2], s=6, alpha=0.6,
                       color=plotting.CLASS_COLORS[int(label) % len(plotting.CLASS_COLORS)],
                       label=f"class {int(label)}")
        ax.set_xlabel("x0")
        ax.set_ylabel("x1")
        ax.set_zlabel("x2")
        ax.legend(loc="upper left")


def plot_2d_flows(trajectory: Any, num_flows: int = 2, figsize: tuple[float, float] = (8, 4),
                  alpha: float = 0.8) -> None:
    """Dimension 0 (red) and dimension 1 (blue) of the first ``num_flows`` trajectories ``[T, B, D>=2]``.

    Each is drawn against its step index ``0 .. T-1``, as torchdyn does, on a new pyplot figure of ``figsize``
    with two axes (dimension 0, dimension 1; the second left current), each holding ``num_flows`` lines.

    Returns:
        None, as torchdyn's does: the figure is ``plt.gcf()``.

    Raises:
        ValueError: ``trajectory`` not ``[T, B, D>=2]``, ``num_flows`` outside ``[1, B]``, a bad ``figsize`` or
            ``alpha``.
    """
    traj = plotting._as_trajectory(trajectory, min_dims=2)
    n = integer("num_flows", num_flows, minimum=1, maximum=traj.shape[1])
    alpha = _alpha("alpha", alpha)
    size = _figsize(figsize)
    steps = np.arange(traj.shape[0])
    with _new_pyplot_figure(size) as fig:
        for d, (ax, color) in enumerate(zip(fig.subplots(1, 2), ("red", "blue"))):
            ax.plot(steps, traj[:, :n, d], color=color, alpha=alpha)
            ax.set(title=f"Dimension {d}", xlabel="solution step", ylabel=f"$h_{d}$")


def plot_2d_boundary(model: Callable[[Tensor], Tensor], X: Any, y: Any, mesh: Any, num_classes: int = 2,
                     figsize: tuple[float, float] = (8, 4), alpha: float = 0.8) -> None:
    """The class ``model`` predicts at each point of ``mesh [H, W, 2]``, filled, with the data ``X [N, 2]`` on top.

    ``model`` maps the mesh's points ``[H*W, 2]`` to logits ``[H*W, C]`` (``C >= 2``), and each point gets its
    argmax class (torchdyn's argmax of the softmax). The class regions are filled (``winter`` colours) in the
    data's coordinates, with the boundaries between them drawn as lines; the samples of each class
    ``0 .. num_classes-1`` (labels ``y [N]``) are scattered in that class's colour.

    Returns:
        None, as torchdyn's does: the drawing is on a new pyplot figure of ``figsize`` (one axes), ``plt.gcf()``.

    Raises:
        ValueError: ``mesh`` not ``[H, W, 2]``, ``X`` not ``[N, 2]``, ``y`` not ``[N]``, logits not
            ``[H*W, C>=2]``, a bad ``num_classes``, ``figsize`` or ``alpha``.
    """
    grid = mesh.detach() if isinstance(mesh, Tensor) else torch.as_tensor(np.asarray(mesh))
    if grid.ndim != 3 or grid.shape[-1] != 2 or min(grid.shape[:2]) < 2:
        raise ValueError(f"mesh must be a grid of points [H, W, 2] with H, W >= 2, got shape {tuple(grid.shape)}")
    points = plotting._to_numpy(X).astype(np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"X must be points [N, 2], got shape {tuple(points.shape)}")
    labels = plotting._as_labels(y, points.shape[0])
    n_classes = integer("num_classes", num_classes, minimum=1)
    alpha = _alpha("alpha", alpha)
    size = _figsize(figsize)
    (H, W), n_points = grid.shape[:2], grid.shape[0] * grid.shape[1]
    device, dtype = plotting._module_device_dtype(model)
    with torch.no_grad():
        logits = model(grid.reshape(n_points, 2).to(device=device, dtype=dtype))
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != n_points or logits.shape[1] < 2:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"model must map the mesh's points [{n_points}, 2] to logits [{n_points}, C >= 2], got {got}")
    predicted = logits.argmax(dim=1).cpu().numpy().reshape(H, W)
    grid_x, grid_y = (plotting._to_numpy(grid[..., k]).astype(np.float64) for k in (0, 1))
    n_logits = logits.shape[1]
    with _new_pyplot_figure(size) as fig:
        ax = fig.add_subplot(1, 1, 1)
        ax.contourf(grid_x, grid_y, predicted, levels=np.arange(n_logits + 1) - 0.5, cmap="winter", alpha=alpha)
        if predicted.min() != predicted.max():
            ax.contour(grid_x, grid_y, predicted, levels=np.arange(n_logits - 1) + 0.5, colors=plotting._NEUTRAL,
                       linewidths=1.0)
        for c in range(n_classes):
            members = labels == c
            ax.scatter(points[members, 0], points[members, 1], alpha=alpha, label=f"class {c}",
                       color=plotting.CLASS_COLORS[c % len(plotting.CLASS_COLORS)])
        ax.set(xlabel="input $x_0$", ylabel="input $x_1$", title="Decision regions")
        _make_colour_scale_current(fig)


class _Grid1D(NamedTuple):
    S: Tensor
    X: Tensor
    U: Tensor
    V: Tensor


class FieldGrid1D(_Grid1D):
    """What :func:`plot_traj_vf_1D` returns: torchdyn's ``(S, X, U, V)``, plus the figure drawn on as ``.figure``
    (pyplot's, the one holding the current axes)."""

    figure: Figure | None

    def __new__(cls, S: Tensor, X: Tensor, U: Tensor, V: Tensor, figure: Figure | None = None) -> FieldGrid1D:
        grid = super().__new__(cls, S, X, U, V)
        grid.figure = figure
        return grid


def plot_traj_vf_1D(model: Any, s_span: Any, traj: Any, device: str | torch.device | None, x_span: Sequence[float],
                    n_grid: int, n_levels: int = 30, contour_alpha: float = 0.7, cmap: str | Colormap = "winter",
                    traj_color: Any = "orange", traj_alpha: float = 0.1) -> FieldGrid1D:
    """A 1-D field ``f(s, h)`` over the (depth ``s``, state ``h``) plane, with trajectories on top.

    The field (found in ``model`` as :func:`plot_static_vector_field` finds it) is evaluated on an
    ``n_grid x n_grid`` grid over depths ``s_span[0] .. s_span[-1]`` and states ``x_span[0] .. x_span[-1]``.
    Filled contours (``n_levels`` levels, ``cmap``, ``contour_alpha``) show the speed ``sqrt(1 + f**2)`` of
    ``(ds, dh) = (1, f)``, black streamlines follow ``dh/ds = f(s, h)``, and dimension 0 of each trajectory
    ``traj [T, B, D>=1]`` is drawn against ``s_span [T]`` (``traj_color``, ``traj_alpha``) unless ``traj`` is None.
    As torchdyn's does, it draws on pyplot's current axes (``plt.gca()``: a new figure only when none is open),
    so ``plt.subplot(1, 2, i)`` before the call picks where it goes.

    Args:
        device: accepted for torchdyn compatibility; the field is evaluated where its parameters are.

    Returns:
        torchdyn's ``(S, X, U, V)``, each ``[n_grid, n_grid]`` on the cpu: the grid ``S[i, j] = s_i``,
        ``X[i, j] = x_j`` and the field ``U = 1``, ``V[i, j] = f(s_i, x_j)``; ``.figure`` is the pyplot figure
        drawn on.

    Raises:
        ValueError: a data-controlled field (``DataControl``: its value depends on each sample's start, not only
            on ``(s, h)``), a field that does not map states ``[n_grid, 1]`` to ``[n_grid, 1]``, a span that does
            not increase, ``traj`` not ``[len(s_span), B, D>=1]``, a bad ``n_grid``, ``n_levels`` or alpha.
    """
    n = integer("n_grid", n_grid, minimum=2)
    levels = integer("n_levels", n_levels, minimum=1)
    contour_alpha, traj_alpha = _alpha("contour_alpha", contour_alpha), _alpha("traj_alpha", traj_alpha)
    depth = plotting._to_numpy(s_span).astype(np.float64).reshape(-1)
    (s_lo, s_hi), (x_lo, x_hi) = _span("s_span", depth), _span("x_span", x_span)
    states = None
    if traj is not None:
        states = plotting._as_trajectory(traj)
        if states.shape[0] != depth.size:
            raise ValueError(f"traj must have one state per depth of s_span ({depth.size}), got shape "
                             f"{tuple(states.shape)}")
    field = _field_of(model)
    field = field if isinstance(field, VectorField) else VectorField(field)
    if field.control_layers:
        raise ValueError("plot_traj_vf_1D cannot draw a data-controlled field (DataControl): its value depends on "
                         "each sample's initial state, not only on (s, h)")
    on, dtype = plotting._module_device_dtype(field)
    ss, xx = torch.linspace(s_lo, s_hi, n, dtype=dtype), torch.linspace(x_lo, x_hi, n, dtype=dtype)
    S, X = torch.meshgrid(ss, xx, indexing="ij")
    h = xx.to(on)[:, None]
    V = torch.empty(n, n, dtype=dtype)
    with torch.no_grad(), explained_shapes("plot_traj_vf_1D's field", {"the 1-D states h": h}, field.vf):
        for i in range(n):
            out = field(ss[i].to(on), h)
            if not isinstance(out, Tensor) or out.shape != h.shape:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"plot_traj_vf_1D draws a 1-D field: it must map states [{n}, 1] to [{n}, 1], "
                                 f"got {got}")
            V[i] = out[:, 0].to("cpu", dtype)
    U = torch.ones_like(V)
    ax = _pyplot().gca()
    grid_s, grid_x = S.double().numpy(), X.double().numpy()
    ax.contourf(grid_s, grid_x, torch.sqrt(U**2 + V**2).double().numpy(), levels, cmap=cmap, alpha=contour_alpha)
    ax.streamplot(grid_s[:, 0], grid_x[0], U.T.double().numpy(), V.T.double().numpy(), color="black", linewidth=1)
    if states is not None:
        ax.plot(depth, states[:, :, 0], color=traj_color, alpha=traj_alpha)
    ax.set(xlabel="depth $s$", ylabel="state $h(s)$")
    _make_colour_scale_current(ax.figure)
    return FieldGrid1D(S, X, U, V, ax.figure)
