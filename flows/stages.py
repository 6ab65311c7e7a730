"""Submitting the pipeline's stages: the options every stage gets, and the stages of one grid cell."""

from __future__ import annotations

from typing import Any

from prefect.context import FlowRunContext
from prefect import get_client, get_run_logger
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId
from prefect.futures import PrefectFuture, wait
from prefect.tasks import exponential_backoff

from tasks.cache import StageOutput
from tasks.config import PipelineConfig
from tasks.evaluate import evaluate_cell
from tasks.grid import Cell
from tasks.records import ManifestRecords, saved_records, stage_result_options
from tasks.render import render_plots
from tasks.store import ArtifactStore, artifact_store
from tasks.train import train_cell
from tasks.trajectories import integrate_trajectories

CELL_STAGES = ("trained", "metrics", "trajectories", "plots")


class Stages:
    """Applies a run's settings (result storage, refresh, retries) to stage tasks before they are submitted."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.store: ArtifactStore = artifact_store(config.run.artifacts_dir)
        self.common = {"root": self.store.location, "refresh": config.run.refresh}
        self._records: ManifestRecords | None = None

    @property
    def records(self) -> ManifestRecords:
        """The stages' Prefect cache records (their manifests), saved on the server on first use."""
        if self._records is None:
            self._records = saved_records(self.store.location)
        return self._records

    def options(self, *, retryable: bool) -> dict[str, Any]:
        """Stage task options: the manifests as Prefect's cache records, refresh, and retries."""
        run = self.config.run
        options: dict[str, Any] = {**stage_result_options(self.records), "refresh_cache": run.refresh}
        if retryable:
            delays = exponential_backoff(backoff_factor=run.retry_delay_seconds)(run.retries) if run.retries else 0
            options |= {"retries": run.retries, "retry_delay_seconds": delays}
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
    """Wait for every future, then return their results or raise the failing stage's own error.

    Waiting for all first means a failed cell does not cancel the others' running stages. A stage whose
    upstream failed never runs: Prefect leaves it Pending ("NotReady") and its ``result()`` would raise
    ``UnfinishedRun``. That upstream may be a future the caller did not pass (the dataset, a field), so its
    error is taken from the flow run's in-process record of finished task runs (``run_results``, which
    links each final state to its result, a failed run's being its exception).
    """
    wait(futures)
    states = [future.state for future in futures]
    mark_cached(futures)
    for future, state in zip(futures, states):
        if state.is_final() and not state.is_completed():
            future.result()  # raises this stage's own error
    context = FlowRunContext.get()
    if context is not None and not all(state.is_final() for state in states):
        for linked, _, ref in list(context.run_results.values()):
            error = ref() if ref is not None else None
            if (linked.is_failed() or linked.is_crashed()) and isinstance(error, BaseException):
                raise error
    return [future.result() for future in futures]  # a stage still unfinished raises UnfinishedRun


CACHED_SUFFIX = " (cached)"


def mark_cached(futures: list[PrefectFuture]) -> None:
    """Rename the task runs that came back ``Cached`` to ``<name> (cached)``, so the run graph tells them apart.

    One read of the task runs and one rename per cached one; a failure to rename only logs a warning.
    """
    cached = [future.task_run_id for future in futures if future.state.name == "Cached"]
    if not cached:
        return
    try:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=cached)))
            for run in runs:
                if not run.name.endswith(CACHED_SUFFIX):
                    client.set_task_run_name(run.id, run.name + CACHED_SUFFIX)
    except Exception as err:  # cosmetic: never fail a run over a name
        get_run_logger().warning("could not mark %d cached task runs in the UI: %s", len(cached), err)


def resolve_cells(cells: list[dict[str, PrefectFuture]]) -> list[dict[str, StageOutput]]:
    """:func:`resolve` for the futures of several cells, keeping their shape."""
    values = iter(resolve([future for cell in cells for future in cell.values()]))
    return [{name: next(values) for name in cell} for cell in cells]
