"""Stage 6: render a trained cell's plots as PNGs."""

from __future__ import annotations

from tasks import offload
from tasks.cache import Built, StageContext, StageOutput, stage_task
from tasks.config import ModelConfig, OutputConfig
from tasks.render_worker import PLOTS, THUMBNAIL, TRAJECTORY_PLOTS, augmented_dims, draw_plots, write_thumbnail

__all__ = ["PLOTS", "THUMBNAIL", "augmented_dims", "draw_plots", "render_plots", "write_thumbnail"]
# Drawn in two calls at once where two cores are spare (the last cell of a run, once the trainings are done): the
# decision boundary alone takes about as long as the other three plots together.
SPLIT = (TRAJECTORY_PLOTS, ("decision_boundary",))


@stage_task("render")
def render_plots(ctx: StageContext, *, dataset: StageOutput, trained: StageOutput,
                 trajectories: StageOutput | None, model: ModelConfig, output: OutputConfig) -> Built:
    """Write one PNG per plot in :data:`PLOTS` that applies to the cell, each titled with the cell's name, and its
    JPEG thumbnail (file :data:`THUMBNAIL`); ``data["plots"]`` lists the plots.

    Trajectory plots need a continuous-depth model (no ``trajectories`` for an equilibrium model); the
    vector field needs a 2-D state; the decision boundary needs 2-D inputs. The drawing runs in stage worker
    processes where the run has them (:mod:`tasks.offload`): in two at once where two cores are spare, with the
    same files.
    """
    inputs = dict(checkpoint=trained.path(ctx.root, "checkpoint"), test_set=dataset.path(ctx.root, "test"),
                  trajectories=None if trajectories is None else trajectories.path(ctx.root, "trajectories"),
                  cell=trained.data["cell"], model=model, output=output)
    parts = SPLIT if trajectories is not None and offload.spare_cores() >= len(SPLIT) else (PLOTS,)
    futures = [offload.submit(draw_plots, ctx.folder, plots=part, **inputs) for part in parts]
    drawn: dict = {}
    for part, future in zip(parts, futures):
        drawn |= draw_plots(ctx.folder, plots=part, **inputs) if future is None else future.result()
    plots = [name for name in PLOTS if name in drawn]
    files = {name: drawn[name] for name in plots} | {THUMBNAIL.format(plot=name): drawn[THUMBNAIL.format(plot=name)]
                                                     for name in plots}
    return Built(files=files, data={"plots": plots})
