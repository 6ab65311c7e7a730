"""A trained cell's plots, drawn where the render stage (:mod:`tasks.render`) sends them: a stage worker process
(:mod:`tasks.offload`) where the run has them, else in place.

No Prefect here: the workers' forkserver imports this module (:data:`tasks.offload.PRELOAD`), and a worker imports
nothing it does not use.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from nodecore.files import atomic_write
from tasks.config import ModelConfig, OutputConfig

if TYPE_CHECKING:
    from torch import nn

PLOTS = ("depth", "state_space", "vector_field", "decision_boundary")
TRAJECTORY_PLOTS = ("depth", "state_space", "vector_field")  # drawn from the trajectories stage's output
THUMBNAIL = "{plot}-thumbnail"  # the file name of a plot's JPEG thumbnail in the stage output


def write_thumbnail(png: Path, target: Path, *, size: int = 560, quality: int = 80) -> Path:
    """A JPEG thumbnail of the plot ``png`` at ``target``: small enough to inline many in one UI artifact, and made
    here, once, so that a report of cached cells only reads it."""
    from PIL import Image

    with Image.open(png) as image:
        image = image.convert("RGB")
        image.thumbnail((size, size))
        with atomic_write(target) as handle:
            image.save(handle, format="JPEG", quality=quality, optimize=True)
    return target


def augmented_dims(classifier: nn.Module, state_dim: int) -> tuple[int, ...]:
    """The state dimensions that ``classifier``'s augmenter adds as zeros (none for another model)."""
    from nodecore.classifiers import ODEClassifier
    from nodecore.fields import Augmenter

    augmenter = classifier.augmenter if isinstance(classifier, ODEClassifier) else None
    if not isinstance(augmenter, Augmenter) or augmenter.augment_func is not None:
        return ()
    first = 0 if augmenter.order == "first" else state_dim - augmenter.augment_dims
    return tuple(range(first, first + augmenter.augment_dims))


def draw_plots(folder: Path, *, checkpoint: Path, test_set: Path, trajectories: Path | None, cell: str,
               model: ModelConfig, output: OutputConfig, plots: Collection[str] = PLOTS) -> dict[str, Path]:
    """Draw the plots of the model at ``checkpoint`` into ``folder``: ``{plot: png}`` for each plot of ``plots``
    (default :data:`PLOTS`) that applies, in :data:`PLOTS` order, then ``{THUMBNAIL: jpeg}`` for each (see
    :func:`tasks.render.render_plots`). Each plot is drawn on its own, so a subset draws the same files."""
    # Imported here, not at the top: the flow imports this module (through tasks.render) to submit the stage, and
    # a run whose cells are all cached should not pay for torch and matplotlib.
    from nodecore.checkpoints import load_model
    from nodecore.dataset_io import read_dataset
    from nodecore.neuralode import NeuralODE
    from nodecore.plotting import (
        plot_decision_boundary,
        plot_state_space,
        plot_trajectories_depth,
        plot_vector_field,
        save_figure,
        vector_field_limits,
    )
    from nodecore.trajectory_io import read_trajectory
    from nodecore.training import depth_grid, logits

    classifier, _ = load_model(checkpoint)
    figures = {}
    if trajectories is not None and any(name in plots for name in TRAJECTORY_PLOTS):
        t_eval, trajectory, labels, _ = read_trajectory(trajectories)
        states = {"max_points": output.plot_samples, "title": cell,
                  "augmented_dims": augmented_dims(classifier, trajectory.shape[-1])}
        if "depth" in plots:
            figures["depth"] = plot_trajectories_depth(trajectory, t_eval, labels, **states)
        if "state_space" in plots:
            figures["state_space"] = plot_state_space(trajectory, labels, **states)
        if "vector_field" in plots and trajectory.shape[-1] == 2 and isinstance(classifier, NeuralODE):
            xlim, ylim = vector_field_limits(trajectory)
            figures["vector_field"] = plot_vector_field(
                classifier.vf, xlim=xlim, ylim=ylim, trajectory=trajectory, labels=labels,
                max_points=output.plot_samples, title=cell)
    if "decision_boundary" in plots:
        X, y, _ = read_dataset(test_set)
        if X.shape[1] == 2:
            span = depth_grid(model.t_end, model.t_points)
            figures["decision_boundary"] = plot_decision_boundary(
                lambda grid: logits(classifier, grid, span), X, y, title=cell)
    files = {name: save_figure(figure, folder / f"{name}.png") for name, figure in figures.items()}
    thumbnails = {THUMBNAIL.format(plot=name): write_thumbnail(path, folder / f"{name}.thumbnail.jpg")
                  for name, path in files.items()}
    return files | thumbnails
