"""Submitting the pipeline's stages: the options every stage gets, and the stages of one grid cell."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.futures import PrefectFuture, wait

from tasks.config import PipelineConfig
from tasks.grid import Cell
from tasks.cache import RESULTS_DIR, StageOutput
from tasks.evaluate import evaluate_cell
from tasks.render import render_plots
from tasks.train import train_cell
from tasks.trajectories import integrate_trajectories

CELL_STAGES = ("trained", "metrics", "trajectories", "plots")


class Stages:
    """Applies a run's settings (result storage, refresh, retries) to stage tasks before they are submitted."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.root = Path(config.run.artifacts_dir).resolve()
        self.common = {"root": str(self.root), "refresh": config.run.refresh}

    def options(self, *, retryable: bool) -> dict[str, Any]:
        run = self.config.run
        options: dict[str, Any] = {"result_storage": self.root / RESULTS_DIR, "refresh_cache": run.refresh}
        if retryable:
            delays = [run.retry_delay_seconds * 2**i for i in range(run.retries)]
            options |= {"retries": run.retries, "retry_delay_seconds": delays or 0}
        return options

    def __call__(self, task: Any, *, retryable: bool = False, name: str | None = None) -> Any:
        options = self.options(retryable=retryable)
        if name:
            options["task_run_name"] = name
        return task.with_options(**options)

    def submit_cell(self, cell: Cell, dataset: Any, field: Any, *, run_device: str | None = None
                    ) -> dict[str, PrefectFuture]:
        """Submit train -> (evaluate, trajectories -> render) for ``cell``; upstreams may be futures.

        ``field`` is the output of the field stage for ``cell.model``; ``run_device`` is ``cell.device`` as
        this process names it, when a dispatcher remapped it with ``CUDA_VISIBLE_DEVICES``.
        """
        config, common = self.config, self.common
        trained = self(train_cell, retryable=True, name=f"train-{cell.name}").submit(
            dataset=dataset, field=field, model=config.model, solver=cell.solver, solver_config=config.solver,
            training=config.training, device=cell.device, run_device=run_device, **common)
        metrics = self(evaluate_cell, retryable=True, name=f"evaluate-{cell.name}").submit(
            dataset=dataset, trained=trained, model=config.model, **common)
        trajectories = None
        if cell.model != "deq":  # an equilibrium model has no depth to integrate over
            trajectories = self(integrate_trajectories, name=f"trajectories-{cell.name}").submit(
                dataset=dataset, trained=trained, model=config.model, output=config.output, **common)
        plots = self(render_plots, name=f"render-{cell.name}").submit(
            dataset=dataset, trained=trained, trajectories=trajectories, model=config.model, output=config.output,
            **common)
        futures = dict(zip(CELL_STAGES, (trained, metrics, trajectories, plots)))
        return {name: future for name, future in futures.items() if future is not None}


def resolve(futures: list[PrefectFuture]) -> list[Any]:
    """Wait for every future, then return their results or raise the first stage's own error.

    Waiting for all first means a failed cell does not cancel the others' running stages, and the error
    raised is the failing stage's, not a downstream "upstream task did not complete".
    """
    wait(futures)
    return [future.result() for future in futures]


def resolve_cells(cells: list[dict[str, PrefectFuture]]) -> list[dict[str, StageOutput]]:
    """:func:`resolve` for the futures of several cells, keeping their shape."""
    values = iter(resolve([future for cell in cells for future in cell.values()]))
    return [{name: next(values) for name in cell} for cell in cells]
