"""Tests for nodecore.plotting (headless, fast)."""

from __future__ import annotations

import subprocess
import sys

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from nodecore import plotting
from nodecore.plotting import (
    figure_to_png_bytes,
    plot_decision_boundary,
    plot_state_space,
    plot_trajectories_depth,
    plot_vector_field,
    save_figure,
    vector_field_limits,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def traj_data():
    g = torch.Generator().manual_seed(0)
    T, B, D = 12, 20, 2
    t = torch.linspace(0.0, 1.0, T)
    traj = torch.randn(T, B, D, generator=g).cumsum(0)
    y = torch.arange(B) % 2
    return traj, t, y


@pytest.fixture
def tiny_field():
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))
    return f, (lambda t, x: f(x))


def test_import_does_not_load_pyplot_or_switch_backend():
    # Load plotting.py standalone in a fresh interpreter: no pyplot, backend untouched.
    code = (
        "import importlib.util, sys, matplotlib\n"
        "matplotlib.use('svg')\n"
        f"spec = importlib.util.spec_from_file_location('p', {plotting.__file__!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_plot_trajectories_depth_axes(traj_data):
    traj, t, y = traj_data
    fig = plot_trajectories_depth(traj, t, y)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == traj.shape[2]
    # one line per sample in each dimension's collection
    assert len(fig.axes[0].collections[0].get_segments()) == traj.shape[1]


def test_plot_trajectories_depth_numpy_and_max_points(traj_data):
    traj, t, y = traj_data
    traj3 = np.concatenate([traj.numpy(), traj.numpy()[..., :1]], axis=-1)
    fig = plot_trajectories_depth(traj3, t.numpy(), y.numpy(), max_points=5)
    assert len(fig.axes) == 3
    assert len(fig.axes[0].collections[0].get_segments()) == 5


def test_plot_trajectories_depth_accepts_grad_tensors(traj_data):
    traj, t, y = traj_data
    traj = traj.clone().requires_grad_(True) * 2.0
    fig = plot_trajectories_depth(traj, t, y)
    assert len(fig.axes) == 2


def test_plot_state_space(traj_data):
    traj, _, y = traj_data
    fig = plot_state_space(traj, y, max_points=7)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 1
    assert len(fig.axes[0].collections[0].get_segments()) == 7


def test_vector_field_limits(traj_data):
    traj, _, _ = traj_data
    (x0, x1), (y0, y1) = vector_field_limits(traj, margin=0.1)
    xs, ys = traj[..., 0], traj[..., 1]
    span_x = float(xs.max() - xs.min())
    assert x0 == pytest.approx(float(xs.min()) - 0.1 * span_x)
    assert x1 == pytest.approx(float(xs.max()) + 0.1 * span_x)
    assert y0 < float(ys.min()) and y1 > float(ys.max())
    # degenerate (constant) trajectory still yields a non-empty box
    (a, b), (c, d) = vector_field_limits(torch.zeros(3, 4, 2))
    assert a < b and c < d


def test_plot_vector_field_counts_points_and_passes_t():
    calls = []

    def field(t, x):
        calls.append((float(t), tuple(x.shape)))
        return torch.stack([-x[:, 1], x[:, 0]], dim=-1)

    fig = plot_vector_field(field, xlim=(-1.0, 1.0), ylim=(-2.0, 2.0), n_points=13, t=0.5)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2  # plot + colorbar
    assert calls == [(0.5, (13 * 13, 2))]


def test_plot_vector_field_grid_orientation():
    seen = {}

    def field(t, x):
        seen["x"] = x.clone()
        return torch.ones_like(x)

    plot_vector_field(field, xlim=(0.0, 1.0), ylim=(10.0, 20.0), n_points=3)
    pts = seen["x"].reshape(3, 3, 2)
    # indexing="xy": rows vary in y, columns vary in x
    assert torch.allclose(pts[0, :, 0], torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(pts[:, 0, 1], torch.tensor([10.0, 15.0, 20.0]))


def test_plot_vector_field_with_tiny_mlp_and_trajectory(tiny_field, traj_data):
    _, field = tiny_field
    traj, _, _ = traj_data
    xlim, ylim = vector_field_limits(traj)
    fig = plot_vector_field(field, xlim=xlim, ylim=ylim, n_points=20, trajectory=traj)
    assert len(fig.axes) == 2
    assert fig.axes[0].get_xlim() == pytest.approx(xlim)


def test_plot_vector_field_module_dtype():
    class Field(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2).double()
            self.dtypes = []

        def forward(self, t, x):
            self.dtypes.append((t.dtype, x.dtype))
            return self.lin(x)

    f = Field()
    plot_vector_field(f, xlim=(-1, 1), ylim=(-1, 1), n_points=8)
    assert f.dtypes == [(torch.float64, torch.float64)]
    assert not any(p.grad is not None for p in f.parameters())


def test_plot_decision_boundary_binary_and_multiclass(tiny_field):
    f, _ = tiny_field
    X = torch.randn(30, 2)
    y = (X[:, 0] > 0).long()
    fig = plot_decision_boundary(f, X, y, n_points=25)  # C == 2
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    fig = plot_decision_boundary(lambda z: z[:, :1], X.numpy(), y.numpy(), n_points=25)  # C == 1
    assert len(fig.axes) == 2
    w = torch.randn(2, 3)
    fig = plot_decision_boundary(lambda z: z @ w, X, torch.arange(30) % 3, n_points=25)
    assert len(fig.axes) == 2


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: plot_trajectories_depth(torch.zeros(5, 3), torch.zeros(5), torch.zeros(3)), r"\[T, B, D\]"),
        (lambda: plot_trajectories_depth(torch.zeros(5, 3, 2), torch.zeros(5), torch.zeros(4)), r"\[3\]"),
        (lambda: plot_trajectories_depth(torch.zeros(5, 3, 2), torch.zeros(4), torch.zeros(3)), r"t_eval"),
        (lambda: plot_state_space(torch.zeros(5, 3, 1), torch.zeros(3)), r"D >= 2.*\(5, 3, 1\)"),
        (lambda: plot_state_space(torch.zeros(5, 3, 2), torch.zeros(2)), r"labels"),
        (lambda: vector_field_limits(torch.zeros(5, 3, 1)), r"D>=2"),
        (lambda: plot_vector_field(lambda t, x: x[:, :1], xlim=(0, 1), ylim=(0, 1), n_points=4), r"\[16, 2\]"),
        (lambda: plot_vector_field(lambda t, x: x, xlim=(1, 0), ylim=(0, 1)), r"xlim"),
        (lambda: plot_decision_boundary(lambda z: z, torch.zeros(4, 3), torch.zeros(4)), r"\[N, 2\].*\(4, 3\)"),
        (lambda: plot_decision_boundary(lambda z: z, torch.zeros(4, 2), torch.zeros(5)), r"labels"),
    ],
)
def test_bad_shapes_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_save_figure_writes_png(tmp_path, traj_data):
    traj, _, y = traj_data
    fig = plot_state_space(traj, y)
    out = save_figure(fig, tmp_path / "sub" / "dir" / "state.png", dpi=50)
    assert out == tmp_path / "sub" / "dir" / "state.png"
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    img = mpimg.imread(out)
    assert img.ndim == 3 and img.shape[0] > 0 and img.shape[1] > 0
    assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 1  # not blank
    assert sorted(p.name for p in out.parent.iterdir()) == ["state.png"]  # no temp left


def test_save_figure_atomic_on_failure(tmp_path, monkeypatch, traj_data):
    traj, _, y = traj_data
    fig = plot_state_space(traj, y)
    target = tmp_path / "fig.png"

    def boom(self, *args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_figure(fig, target)
    assert list(tmp_path.iterdir()) == []


def test_save_figure_failure_keeps_existing_file(tmp_path, monkeypatch, traj_data):
    traj, _, y = traj_data
    target = save_figure(plot_state_space(traj, y), tmp_path / "fig.png")
    original = target.read_bytes()
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (_ for _ in ()).throw(OSError("x")))
    with pytest.raises(OSError):
        save_figure(plot_state_space(traj, y), target)
    assert target.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]


def test_figure_to_png_bytes(traj_data):
    traj, t, y = traj_data
    data = figure_to_png_bytes(plot_trajectories_depth(traj, t, y), dpi=40)
    assert data[:8] == PNG_SIGNATURE and len(data) > 100
