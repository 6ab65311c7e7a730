"""Headless plotting helpers for Neural ODE trajectories, vector fields and classifiers.

Every function builds a standalone :class:`matplotlib.figure.Figure` attached to an Agg
canvas; pyplot's global state (current figure, figure manager, backend) is never touched,
so importing this module is safe in interactive sessions and figures are freed by the
garbage collector like any other object. Array inputs may be torch tensors (any device,
with or without grad) or numpy arrays.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from nodecore._checks import integer
from nodecore.files import atomic_write

__all__ = [
    "DEFAULT_COLORS", "figure_to_png_bytes", "plot_decision_boundary", "plot_state_space",
    "plot_trajectories_depth", "plot_vector_field", "save_figure", "vector_field_limits",
]

DEFAULT_COLORS: tuple[str, ...] = (
    "orange", "blue", "green", "red", "purple", "brown", "pink", "gray", "olive", "cyan",
)
Limits = tuple[float, float]


# ----------------------------------------------------------------------------- helpers
def _to_numpy(x: Any) -> np.ndarray:
    """Detach a tensor (any device/dtype) or coerce an array-like to a numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _as_trajectory(trajectory: Any, min_dims: int = 1) -> np.ndarray:
    traj = _to_numpy(trajectory)
    if traj.ndim != 3 or traj.shape[0] < 1 or traj.shape[1] < 1 or traj.shape[2] < min_dims:
        raise ValueError(
            f"trajectory must have shape [T, B, D] with T >= 1, B >= 1, D >= {min_dims}; "
            f"got {tuple(traj.shape)}"
        )
    return traj.astype(np.float64, copy=False)


def _as_labels(labels: Any, n: int) -> np.ndarray:
    y = _to_numpy(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"labels must have shape [{n}]; got {tuple(y.shape)}")
    return y.astype(np.int64)


def _subsample(n: int, max_points: int) -> np.ndarray:
    max_points = integer("max_points", max_points, minimum=1)
    if n <= max_points:
        return np.arange(n)
    return np.linspace(0, n - 1, max_points).round().astype(np.int64)


def _class_colors(y: np.ndarray, colors: Sequence[str]) -> list[str]:
    if len(colors) == 0:
        raise ValueError("colors must contain at least one colour")
    return [colors[int(c) % len(colors)] for c in y]


def _module_device_dtype(fn: Any) -> tuple[torch.device, torch.dtype]:
    """Device/dtype of an ``nn.Module``'s first parameter; cpu/float32 otherwise."""
    if isinstance(fn, torch.nn.Module):
        p = next(fn.parameters(), None)
        if p is not None:
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def _grid(xlim: Limits, ylim: Limits, n: int, device, dtype) -> tuple[torch.Tensor, ...]:
    """Return 1-D axes ``xs [n]``, ``ys [n]`` and flattened points ``z [n*n, 2]``.

    With ``indexing="xy"`` row ``i`` of the reshaped grid is ``ys[i]`` and column ``j`` is
    ``xs[j]``, the ``[len(y), len(x)]`` layout streamplot/contourf expect.
    """
    n = integer("n_points", n, minimum=2)
    for name, (lo, hi) in (("xlim", xlim), ("ylim", ylim)):
        if not float(lo) < float(hi):
            raise ValueError(f"{name} must be (low, high) with low < high; got {(lo, hi)}")
    xs = torch.linspace(float(xlim[0]), float(xlim[1]), n, device=device, dtype=dtype)
    ys = torch.linspace(float(ylim[0]), float(ylim[1]), n, device=device, dtype=dtype)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    return xs, ys, torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)


def _trajectory_lines(traj: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Segments ``[len(idx), T, 2]`` of each selected sample in the (dim0, dim1) plane."""
    return np.transpose(traj[:, idx, :2], (1, 0, 2))


# ------------------------------------------------------------------------ trajectories
def plot_trajectories_depth(
    trajectory: Any, t_eval: Any, labels: Any, *, max_points: int = 500,
    colors: Sequence[str] = DEFAULT_COLORS, alpha: float = 0.1,
) -> Figure:
    """Plot each state dimension against depth ``t``; one subplot per dimension.

    trajectory: ``[T, B, D]`` states; t_eval: ``[T]`` depths; labels: ``[B]`` integer classes
    used to pick ``colors[label % len(colors)]``. At most ``max_points`` samples are drawn.
    Returns a figure with ``D`` axes.
    """
    traj = _as_trajectory(trajectory)
    T, B, D = traj.shape
    t = _to_numpy(t_eval).astype(np.float64)
    if t.shape != (T,):
        raise ValueError(f"t_eval must have shape [{T}]; got {tuple(t.shape)}")
    y = _as_labels(labels, B)
    idx = _subsample(B, max_points)
    line_colors = _class_colors(y[idx], colors)
    fig = _new_figure((8.0, 2.5 * D))
    axes = fig.subplots(D, 1, sharex=True, squeeze=False)[:, 0]
    for d, ax in enumerate(axes):
        segs = np.stack([np.broadcast_to(t, (len(idx), T)), traj[:, idx, d].T], axis=-1)
        ax.add_collection(LineCollection(segs, colors=line_colors, alpha=alpha))
        ax.autoscale_view()
        ax.set_ylabel(f"$h_{d}(t)$")
    axes[0].set_title("State evolution over depth")
    axes[-1].set_xlabel("depth $t$")
    return fig


def plot_state_space(
    trajectory: Any, labels: Any, *, max_points: int = 500,
    colors: Sequence[str] = DEFAULT_COLORS, alpha: float = 0.2,
) -> Figure:
    """Plot trajectories ``[T, B, D>=2]`` in the (dim0, dim1) plane, coloured by ``labels [B]``.

    Start points are marked with circles, end points with crosses. Returns one axis.
    """
    traj = _as_trajectory(trajectory, min_dims=2)
    y = _as_labels(labels, traj.shape[1])
    idx = _subsample(traj.shape[1], max_points)
    c = _class_colors(y[idx], colors)
    fig = _new_figure((6.0, 6.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.add_collection(LineCollection(_trajectory_lines(traj, idx), colors=c, alpha=alpha))
    ax.scatter(traj[0, idx, 0], traj[0, idx, 1], c=c, marker="o", s=12, label="start")
    ax.scatter(traj[-1, idx, 0], traj[-1, idx, 1], c=c, marker="x", s=16, label="end")
    ax.autoscale_view()
    ax.set(xlabel="$h_0$", ylabel="$h_1$", title="State-space trajectories")
    ax.legend(loc="best")
    return fig


# ------------------------------------------------------------------------ vector field
def vector_field_limits(trajectory: Any, margin: float = 0.1) -> tuple[Limits, Limits]:
    """``(xlim, ylim)`` spanning dims 0 and 1 of ``trajectory [T, B, D>=2]`` (or ``[N, D>=2]``),
    padded by ``margin`` times the range on each side (by ``margin`` if the range is zero)."""
    arr = _to_numpy(trajectory)
    if arr.ndim not in (2, 3) or arr.shape[-1] < 2 or arr.size == 0:
        raise ValueError(f"trajectory must have shape [T, B, D>=2] or [N, D>=2]; got {tuple(arr.shape)}")
    pts = arr.reshape(-1, arr.shape[-1])[:, :2].astype(np.float64)
    lims = []
    for lo, hi in zip(pts.min(axis=0), pts.max(axis=0)):
        pad = margin * (hi - lo) if hi > lo else max(margin, 1e-6)
        lims.append((float(lo - pad), float(hi + pad)))
    return lims[0], lims[1]


def plot_vector_field(
    field: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, xlim: Limits, ylim: Limits,
    n_points: int = 50, t: float | torch.Tensor = 0.0, trajectory: Any = None,
    cmap: str = "inferno",
) -> Figure:
    """Streamplot of ``field(t, z)`` on an ``n_points x n_points`` grid over ``xlim x ylim``.

    ``field`` receives ``t`` as a 0-d tensor and ``z`` of shape ``[n_points**2, 2]`` (on the
    device/dtype of its parameters when it is an ``nn.Module``, cpu/float32 otherwise) and must
    return ``[n_points**2, 2]``. Streamlines are coloured by ``|field|`` with a colorbar; an
    optional ``trajectory [T, B, D>=2]`` is overlaid in light lines. Returns 2 axes.
    """
    device, dtype = _module_device_dtype(field)
    xs, ys, z = _grid(xlim, ylim, n_points, device, dtype)
    t_in = torch.as_tensor(t, device=device, dtype=dtype)
    with torch.no_grad():
        out = _to_numpy(field(t_in, z)).astype(np.float64)
    if out.shape != (n_points * n_points, 2):
        raise ValueError(
            f"field must return shape [{n_points * n_points}, 2] for 2-D states; got {tuple(out.shape)}"
        )
    u, v = (out[:, k].reshape(n_points, n_points) for k in (0, 1))
    mag = np.hypot(u, v)
    fig = _new_figure((7.0, 6.0))
    ax = fig.add_subplot(1, 1, 1)
    strm = ax.streamplot(_to_numpy(xs).astype(np.float64), _to_numpy(ys).astype(np.float64),
                         u, v, color=mag, cmap=cmap, density=1.2, linewidth=1.0)
    fig.colorbar(strm.lines, ax=ax, label="$|f(t, h)|$")
    if trajectory is not None:
        traj = _as_trajectory(trajectory, min_dims=2)
        segs = _trajectory_lines(traj, _subsample(traj.shape[1], 500))
        ax.add_collection(LineCollection(segs, colors="lightblue", alpha=0.4, linewidths=0.8))
    ax.set(xlim=xlim, ylim=ylim, xlabel="$h_0$", ylabel="$h_1$", title=f"Vector field at t={float(t_in):g}")
    return fig


# ------------------------------------------------------------------ decision boundary
def plot_decision_boundary(
    predict_logits: Callable[[torch.Tensor], torch.Tensor], X: Any, y: Any, *,
    n_points: int = 200, margin: float = 0.5, cmap: str = "RdBu_r",
) -> Figure:
    """Decision regions of ``predict_logits(grid [N, 2]) -> [N, C]`` around data ``X [N, 2]``.

    For ``C <= 2`` (``C == 1`` or ``[N]`` means a single binary logit) the probability of
    class 1 is filled; otherwise the argmax class. Data is scattered coloured by ``y [N]``.
    The grid spans the data's range plus ``margin`` on each side. Returns 2 axes.
    """
    Xn = _to_numpy(X).astype(np.float64)
    if Xn.ndim != 2 or Xn.shape[1] != 2 or Xn.shape[0] < 1:
        raise ValueError(f"X must have shape [N, 2]; got {tuple(Xn.shape)}")
    yn = _as_labels(y, Xn.shape[0])
    lo, hi = Xn.min(axis=0) - margin, Xn.max(axis=0) + margin
    device, dtype = _module_device_dtype(predict_logits)
    xs, ys, z = _grid((lo[0], hi[0]), (lo[1], hi[1]), n_points, device, dtype)
    with torch.no_grad():
        logits = torch.as_tensor(predict_logits(z)).detach().float().cpu()
    if logits.ndim == 1:
        logits = logits[:, None]
    if logits.ndim != 2 or logits.shape[0] != z.shape[0]:
        raise ValueError(f"predict_logits must return shape [{z.shape[0]}, C]; got {tuple(logits.shape)}")
    n_cls = logits.shape[1]
    if n_cls <= 2:
        p = torch.sigmoid(logits[:, 0]) if n_cls == 1 else torch.softmax(logits, dim=1)[:, 1]
        zz, levels, vmax, label = p.numpy(), np.linspace(0.0, 1.0, 21), 1.0, "P(class 1)"
    else:
        zz, levels = logits.argmax(dim=1).numpy(), np.arange(n_cls + 1) - 0.5
        vmax, label = n_cls - 1, "predicted class"
    fig = _new_figure((7.0, 6.0))
    ax = fig.add_subplot(1, 1, 1)
    cs = ax.contourf(_to_numpy(xs).astype(np.float64), _to_numpy(ys).astype(np.float64),
                     zz.reshape(n_points, n_points), levels=levels, cmap=cmap, alpha=0.6,
                     vmin=0.0, vmax=vmax)
    fig.colorbar(cs, ax=ax, label=label)
    ax.scatter(Xn[:, 0], Xn[:, 1], c=yn, cmap=cmap, vmin=0.0, vmax=max(vmax, 1),
               edgecolors="k", linewidths=0.4, s=14)
    ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), xlabel="$x_0$", ylabel="$x_1$",
           title="Decision boundary")
    return fig


# ------------------------------------------------------------------------------- output
def figure_to_png_bytes(fig: Figure, *, dpi: int = 100) -> bytes:
    """Render ``fig`` to PNG and return the encoded bytes (e.g. for base64 embedding)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 100) -> Path:
    """Atomically write ``fig`` as a PNG to ``path`` (parents created) and return the path.

    Written with :func:`nodecore.files.atomic_write`: on any error ``path`` is left untouched.
    """
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=dpi)
    return Path(path)
