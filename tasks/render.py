"""Stage 6: render a trained cell's plots as PNGs."""

from __future__ import annotations

import torch

from nodecore.checkpoints import load_model
from nodecore.dataset_io import read_dataset
from nodecore.plotting import (
    plot_decision_boundary,
    plot_state_space,
    plot_trajectories_depth,
    plot_vector_field,
    save_figure,
    vector_field_limits,
)
from nodecore.trajectory_io import read_trajectory
from nodecore.training import logits
from tasks.cache import Built, StageContext, StageOutput, stage_task
from tasks.train import t_span
from flows.config import ModelConfig, OutputConfig

PLOTS = ("depth", "state_space", "vector_field", "decision_boundary")


@stage_task("render")
def render_plots(ctx: StageContext, *, dataset: StageOutput, trained: StageOutput, trajectories: StageOutput,
                 model: ModelConfig, output: OutputConfig) -> Built:
    """Write one PNG per plot in :data:`PLOTS` (2-D states; higher dimensions plot their first two)."""
    neural_ode, _ = load_model(trained.path(ctx.root, "checkpoint"))
    t_eval, trajectory, labels, _ = read_trajectory(trajectories.path(ctx.root, "trajectories"))
    X, y, _ = read_dataset(dataset.path(ctx.root, "test"))
    title = f"{trained.data['solver']} on {trained.data['device']}"
    span = t_span(model)
    figures = {
        "depth": plot_trajectories_depth(trajectory, t_eval, labels, max_points=output.plot_samples),
        "state_space": plot_state_space(trajectory, labels, max_points=output.plot_samples),
    }
    if trajectory.shape[-1] == 2:
        xlim, ylim = vector_field_limits(trajectory)
        figures["vector_field"] = plot_vector_field(neural_ode.vf, xlim=xlim, ylim=ylim, trajectory=trajectory)
        figures["decision_boundary"] = plot_decision_boundary(
            lambda grid: logits(neural_ode, grid, span), X, y)
    files = {}
    for name, figure in figures.items():
        figure.suptitle(f"{name.replace('_', ' ')}: {title}")
        files[name] = save_figure(figure, ctx.folder / f"{name}.png")
    return Built(files=files, data={"plots": list(files)})
