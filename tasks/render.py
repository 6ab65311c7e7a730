"""Stage 6: render a trained cell's plots as PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nodecore.files import atomic_write
from tasks import offload
from tasks.cache import Built, StageContext, StageOutput, stage_task
from tasks.config import ModelConfig, OutputConfig

if TYPE_CHECKING:
    from torch import nn

PLOTS = ("depth", "state_space", "vector_field", "decision_boundary")
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


@stage_task("render")
def render_plots(ctx: StageContext, *, dataset: StageOutput, trained: StageOutput,
                 trajectories: StageOutput | None, model: ModelConfig, output: OutputConfig) -> Built:
    """Write one PNG per plot in :data:`PLOTS` that applies to the cell, each titled with the cell's name, and its
    JPEG thumbnail (file :data:`THUMBNAIL`); ``data["plots"]`` lists the plots.

    Trajectory plots need a continuous-depth model (no ``trajectories`` for an equilibrium model); the
    vector field needs a 2-D state; the decision boundary needs 2-D inputs. The drawing runs in a stage worker
    process where the run has them (:mod:`tasks.offload`).
    """
    files = offload.call(
        draw_plots, ctx.folder, checkpoint=trained.path(ctx.root, "checkpoint"),
        test_set=dataset.path(ctx.root, "test"),
        trajectories=None if trajectories is None else trajectories.path(ctx.root, "trajectories"),
        cell=trained.data["cell"], model=model, output=output)
    return Built(files=files, data={"plots": [name for name in files if name in PLOTS]})


def draw_plots(folder: Path, *, checkpoint: Path, test_set: Path, trajectories: Path | None, cell: str,
               model: ModelConfig, output: OutputConfig) -> dict[str, Path]:
    """Draw the plots of the model at ``checkpoint`` into ``folder``: ``{plot: png}`` for each plot of
    :data:`PLOTS` that applies, in that order, then ``{THUMBNAIL: jpeg}`` for each (see :func:`render_plots`)."""
    # Imported here, not at the top: the flow imports this module to submit the stage, and a run whose cells
    # are all cached should not pay for torch and matplotlib.
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
    X, y, _ = read_dataset(test_set)
    span = depth_grid(model.t_end, model.t_points)
    figures = {}
    if trajectories is not None:
        t_eval, trajectory, labels, _ = read_trajectory(trajectories)
        states = {"max_points": output.plot_samples, "title": cell,
                  "augmented_dims": augmented_dims(classifier, trajectory.shape[-1])}
        figures["depth"] = plot_trajectories_depth(trajectory, t_eval, labels, **states)
        figures["state_space"] = plot_state_space(trajectory, labels, **states)
        if trajectory.shape[-1] == 2 and isinstance(classifier, NeuralODE):
            xlim, ylim = vector_field_limits(trajectory)
            figures["vector_field"] = plot_vector_field(
                classifier.vf, xlim=xlim, ylim=ylim, trajectory=trajectory, labels=labels,
                max_points=output.plot_samples, title=cell)
    if X.shape[1] == 2:
        figures["decision_boundary"] = plot_decision_boundary(
            lambda grid: logits(classifier, grid, span), X, y, title=cell)
    files = {name: save_figure(figure, folder / f"{name}.png") for name, figure in figures.items()}
    thumbnails = {THUMBNAIL.format(plot=name): write_thumbnail(path, folder / f"{name}.thumbnail.jpg")
                  for name, path in files.items()}
    return files | thumbnails
