"""Stage 5: integrate test points through a trained continuous-depth cell on a fine depth grid."""

from __future__ import annotations

import torch

from nodecore.checkpoints import load_model
from nodecore.classifiers import ODEClassifier
from nodecore.dataset_io import read_dataset
from nodecore.trajectory_io import write_trajectory
from nodecore.training import depth_grid
from tasks.cache import Built, StageContext, StageOutput, stage_task
from tasks.config import ModelConfig, OutputConfig


@stage_task("integrate-trajectories")
def integrate_trajectories(ctx: StageContext, *, dataset: StageOutput, trained: StageOutput, model: ModelConfig,
                           output: OutputConfig) -> Built:
    """Write ``trajectories.parquet``: the first ``trajectory_samples`` test points over ``trajectory_points`` depths."""
    classifier, _ = load_model(trained.path(ctx.root, "checkpoint"))
    X, y, _ = read_dataset(dataset.path(ctx.root, "test"))
    X, y = X[: output.trajectory_samples], y[: output.trajectory_samples]
    depths = depth_grid(model.t_end, output.trajectory_points)
    # An augmented classifier's hidden states, not its logits, are the trajectory.
    solve = classifier.states if isinstance(classifier, ODEClassifier) else classifier
    with torch.no_grad():
        t_eval, trajectory = solve(X, depths)
    path = write_trajectory(ctx.folder / "trajectories.parquet", t_eval, trajectory, y,
                            metadata={"solver": trained.data["solver"], "device": trained.data["device"]})
    return Built(files={"trajectories": path}, data={"samples": len(y), "depths": len(depths)})
