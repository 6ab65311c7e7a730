"""Tests for nodecore.plotting (headless, fast)."""

from __future__ import annotations

import subprocess
import sys

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from torch import nn

from nodecore import plotting
from nodecore.plotting import (
    CLASS_COLORS,
    END_MARKER,
    START_MARKER,
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


def test_save_figure_has_the_pixels_of_matplotlibs_own_png(tmp_path, traj_data):
    """Saved with a faster zlib level: the same image as ``savefig``'s default."""
    traj, _, y = traj_data
    plot_state_space(traj, y).savefig(tmp_path / "default.png", format="png", dpi=50)
    out = save_figure(plot_state_space(traj, y), tmp_path / "fast.png", dpi=50)  # a figure of its own: a second
    # draw of one constrained-layout figure may place things a pixel apart
    assert np.array_equal(mpimg.imread(out), mpimg.imread(tmp_path / "default.png"))


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


# ------------------------------------------------- what a user reads off the figures
N_CLASSES = 3


@pytest.fixture
def three_classes():
    """Trajectories ``[12, 30, 2]`` of 3 classes, their depths and labels, and a 3-class linear classifier."""
    g = torch.Generator().manual_seed(1)
    T, B = 12, 30
    traj = torch.randn(T, B, 2, generator=g).cumsum(0)
    return traj, torch.linspace(0.0, 1.0, T), torch.arange(B) % N_CLASSES, torch.randn(2, N_CLASSES, generator=g)


PLOTS = {  # the four plots of one model, as the pipeline draws them, from ``three_classes``
    "depth": lambda traj, t, y, w, **kw: plot_trajectories_depth(traj, t, y, **kw),
    "state_space": lambda traj, t, y, w, **kw: plot_state_space(traj, y, **kw),
    "vector_field": lambda traj, t, y, w, **kw: plot_vector_field(
        lambda s, x: -x, xlim=(-6, 6), ylim=(-6, 6), n_points=12, trajectory=traj, labels=y, **kw),
    "decision_boundary": lambda traj, t, y, w, **kw: plot_decision_boundary(lambda z: z @ w, traj[0], y, n_points=25,
                                                                            **kw),
}
each_plot = pytest.mark.parametrize("plot", list(PLOTS))


def _plot_axes(fig: Figure) -> list:
    """The axes that show data (not colorbars)."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _legend_colors(ax) -> dict[str, tuple]:
    """Legend text -> RGBA of its handle."""
    legend = ax.get_legend()
    assert legend is not None, ax.get_title()
    return {text.get_text(): to_rgba(handle.get_color())
            for text, handle in zip(legend.get_texts(), legend.legend_handles)}


def _class_entries(ax, names) -> dict[str, tuple]:
    """The RGBA of the legend entry that names each class (the one text that is, or starts with, the name)."""
    colors = _legend_colors(ax)
    found = {}
    for name in names:
        matches = [text for text in colors if text == name or text.startswith(name + " ")]
        assert len(matches) == 1, (name, list(colors))
        found[name] = colors[matches[0]]
    return found


def _titles(ax) -> list[str]:
    return [title for title in (ax.get_title(loc) for loc in ("left", "center", "right")) if title]


@each_plot
def test_every_axes_that_shows_classes_has_a_legend_naming_each_class(three_classes, plot):
    for ax in _plot_axes(PLOTS[plot](*three_classes)):
        _class_entries(ax, [f"class {c}" for c in range(N_CLASSES)])  # asserts one entry per class


@each_plot
def test_class_names_replace_the_default_names(three_classes, plot):
    names = ["setosa", "versicolor", "virginica"]
    for ax in _plot_axes(PLOTS[plot](*three_classes, class_names=names)):
        assert not any("class 0" in text for text in _legend_colors(ax))
        _class_entries(ax, names)


def test_class_names_must_name_every_class(three_classes):
    traj, t, y, _ = three_classes
    with pytest.raises(ValueError, match=r"class_names has 2 names.*\[0, 1, 2\]"):
        plot_state_space(traj, y, class_names=["a", "b"])


def test_one_class_palette_across_all_plots(three_classes):
    """Legend entries, lines, markers and decision regions of class c all have CLASS_COLORS[c]."""
    traj, t, y, w = three_classes
    expected = {f"class {c}": to_rgba(CLASS_COLORS[c]) for c in range(N_CLASSES)}
    # the artists themselves: data points and regions (opaque, so RGBA), trajectory lines (transparent, so RGB)
    boundary = PLOTS["decision_boundary"](*three_classes).axes[0]
    points = [c for c in boundary.collections if isinstance(c, PathCollection)]
    assert sorted(tuple(p.get_facecolor()[0]) for p in points) == sorted(expected.values())
    assert [boundary.collections[0].cmap(c) for c in range(N_CLASSES)] == list(expected.values())
    rgb = np.array([to_rgba(CLASS_COLORS[int(c)])[:3] for c in y])
    for name in ("depth", "state_space", "vector_field"):
        lines = PLOTS[name](*three_classes).axes[0].collections[-1 if name == "vector_field" else 0]
        np.testing.assert_allclose(lines.get_edgecolor()[:, :3], rgb, err_msg=name)
    # and the legends that name them
    for name, make in PLOTS.items():
        for ax in _plot_axes(make(*three_classes)):
            assert _class_entries(ax, expected) == expected, name


def test_binary_decision_regions_run_from_class_0_to_class_1_colour(tiny_field):
    f, _ = tiny_field
    X = torch.randn(40, 2)
    fig = plot_decision_boundary(f, X, (X[:, 0] > 0).long(), n_points=25)
    fill = fig.axes[0].collections[0].cmap
    assert fill(0.0) == to_rgba(CLASS_COLORS[0]) and fill(1.0) == to_rgba(CLASS_COLORS[1])
    assert "decision boundary (P = 0.5)" in _legend_colors(fig.axes[0])
    assert fig.axes[1].get_xlabel() == "P(class 1)"


def test_state_space_marks_start_and_end_of_every_class(three_classes):
    traj, _, y, _ = three_classes
    ax = plot_state_space(traj, y).axes[0]
    markers = ax.collections[1:]
    for c in range(N_CLASSES):
        members = (y == c).numpy()
        color = to_rgba(CLASS_COLORS[c])
        mine = [m for m in markers if tuple(m.get_facecolor()[0]) == color]
        starts = [m for m in mine if np.allclose(m.get_offsets(), traj[0, members].numpy())]
        ends = [m for m in mine if np.allclose(m.get_offsets(), traj[-1, members].numpy())]
        assert len(starts) == 1 and len(ends) == 1, f"class {c}"
        assert not np.array_equal(starts[0].get_paths()[0].vertices, ends[0].get_paths()[0].vertices)  # shapes
    # the legend explains the two shapes in a colour that is no class's
    legend = ax.get_legend()
    shapes = {t.get_text(): h for t, h in zip(legend.get_texts(), legend.legend_handles) if h.get_marker() != "None"}
    assert sorted(h.get_marker() for h in shapes.values()) == sorted([START_MARKER, END_MARKER])
    assert any(text.startswith("start") for text in shapes) and any(text.startswith("end") for text in shapes)
    assert not {to_rgba(h.get_color()) for h in shapes.values()} & {to_rgba(c) for c in CLASS_COLORS}


@each_plot
@pytest.mark.parametrize("title", [None, "dopri5@cpu"])
def test_one_title_per_axes_and_the_cell_in_the_one_suptitle(three_classes, plot, title):
    fig = PLOTS[plot](*three_classes, **({"title": title} if title else {}))
    axes_titles = [_titles(ax) for ax in _plot_axes(fig)]
    assert all(len(titles) == 1 for titles in axes_titles), axes_titles
    assert not any(_titles(ax) for ax in fig.axes if ax.get_label() == "<colorbar>")
    assert fig.get_suptitle() == (title or "")
    flat = [titles[0] for titles in axes_titles]
    if title:
        assert not any(title in text or text in title for text in flat), flat
    assert len(set(flat)) == len(flat), flat  # the depth plot's subplots say which dimension they show


@each_plot
def test_every_axis_is_labelled(three_classes, plot):
    fig = PLOTS[plot](*three_classes)
    for ax in _plot_axes(fig):
        assert ax.get_xlabel() and ax.get_ylabel(), ax.get_title()
    assert all(ax.get_xlabel() or ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>")
    if plot == "depth":
        assert all(ax.get_xlabel() == "depth $t$" for ax in fig.axes)


def test_vector_field_legend_says_what_the_streamlines_and_trajectories_are(traj_data):
    traj, _, _ = traj_data
    fig = plot_vector_field(lambda s, x: -x, xlim=(-6, 6), ylim=(-6, 6), n_points=12, t=0.5, trajectory=traj)
    texts = list(_legend_colors(fig.axes[0]))
    assert any("learned vector field" in text and "t=0.5" in text for text in texts), texts
    assert "trajectories of test points" in texts  # no labels: one neutral colour, no classes
    assert not any("class" in text for text in texts)


def _notes(fig: Figure) -> list[str]:
    """Every text of the figure a user reads besides tick labels and the legend: titles, notes, axis labels."""
    texts = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        texts += _titles(ax) + [t.get_text() for t in ax.texts] + [ax.get_xlabel(), ax.get_ylabel()]
    return texts


def test_augmented_dimensions_are_noted_as_starting_at_zero(three_classes):
    traj, t, y, _ = three_classes
    augmented = torch.cat([traj - traj[:1], traj], dim=-1)  # ANODE layout [0, x]: dims 0, 1 start at 0
    depth = plot_trajectories_depth(augmented, t, y, augmented_dims=(0, 1))
    assert ["starts at 0" in ax.get_title() for ax in depth.axes] == [True, True, False, False]
    state = plot_state_space(augmented, y, augmented_dims=[1, 0])
    ax = state.axes[0]
    assert any("augmented" in text and "starts at 0" in text for text in [t.get_text() for t in ax.texts])
    assert "(augmented)" in ax.get_xlabel() and "(augmented)" in ax.get_ylabel()
    assert len(_titles(ax)) == 1  # the note is not a second title
    for fig in (plot_trajectories_depth(augmented, t, y), plot_state_space(augmented, y)):
        assert not any("augmented" in text or "starts at 0" in text for text in _notes(fig))
    with pytest.raises(ValueError, match="augmented_dims"):
        plot_state_space(augmented, y, augmented_dims=(4,))


# ------------------------------------------------------------------------------- figure=
@each_plot
def test_a_given_empty_figure_is_drawn_on_and_returned_as_a_new_one_would_be(three_classes, plot):
    headless = PLOTS[plot](*three_classes, title="cell")
    given = Figure(figsize=(3.0, 2.0))
    assert PLOTS[plot](*three_classes, title="cell", figure=given) is given
    assert [ax.get_title() for ax in given.axes] == [ax.get_title() for ax in headless.axes]
    assert [len(ax.collections) for ax in given.axes] == [len(ax.collections) for ax in headless.axes]
    assert given.get_suptitle() == "cell" and tuple(given.get_size_inches()) == (3.0, 2.0)  # size kept


def test_a_figure_that_already_has_axes_or_is_not_a_figure_is_refused(three_classes):
    traj, _, y, _ = three_classes
    used = Figure()
    used.add_subplot(1, 1, 1)
    with pytest.raises(ValueError, match="figure must be empty: it already has 1 axes"):
        plot_state_space(traj, y, figure=used)
    with pytest.raises(TypeError, match="figure must be a matplotlib Figure .*got Axes"):
        plot_state_space(traj, y, figure=used.axes[0])
    assert len(used.axes) == 1


def test_plots_stay_out_of_pyplot_unless_given_a_pyplot_figure(three_classes, tmp_path):
    import matplotlib.pyplot as plt

    traj, _, y, _ = three_classes
    previous = plt.get_backend()
    plt.switch_backend("agg")
    try:
        plt.close("all")
        plot_state_space(traj, y)
        assert plt.get_fignums() == []  # the default figure is headless, pyplot never sees it
        fig = plot_state_space(traj, y, figure=plt.figure())
        assert plt.gcf() is fig and plt.get_fignums() == [fig.number]
        plt.savefig(tmp_path / "state.png")
        image = mpimg.imread(tmp_path / "state.png")
        assert (np.abs(image - image[0, 0]).sum(axis=-1) > 1e-3).mean() > 0.02  # the drawing, not a blank page
    finally:
        plt.close("all")
        plt.switch_backend(previous)
