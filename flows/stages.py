"""Submitting the pipeline's stages: the options every stage gets, the stages of the grid's cells, and what the
cache already holds of them (found without submitting anything)."""

from __future__ import annotations

import contextvars
import importlib
import importlib.util
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from prefect.context import FlowRunContext
from prefect import get_client, get_run_logger
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId
from prefect.futures import PrefectFuture
from prefect.tasks import exponential_backoff

import tasks.cache as stage_cache
from tasks.cache import StageOutput, cached_output, stage_key
from tasks.config import PipelineConfig
from tasks.grid import Cell
from tasks.records import ManifestRecords, saved_records, stage_result_options
from tasks.store import ArtifactStore, artifact_store


@dataclass(frozen=True)
class StageRef:
    """A stage task named by its module, imported only when the stage must be submitted (its module imports
    torch); its cache key can be computed without it."""

    stage: str  # the name given to ``stage_task``: the stage's folder in the store
    module: str
    function: str
    run_name: str  # prefix of its task runs' names

    def task(self) -> Any:
        """The Prefect task (importing its module)."""
        return getattr(importlib.import_module(self.module), self.function)

    def code_file(self) -> Path:
        """The module's source file, found without importing it: its code version is the stage's."""
        spec = importlib.util.find_spec(self.module)
        assert spec is not None and spec.origin is not None, self.module
        return Path(spec.origin)


GENERATE = StageRef("generate-dataset", "tasks.generate", "generate_dataset", "generate-dataset")
BUILD_FIELD = StageRef("build-vector-field", "tasks.field", "build_vector_field", "build")
TRAIN = StageRef("train", "tasks.train", "train_cell", "train")
EVALUATE = StageRef("evaluate", "tasks.evaluate", "evaluate_cell", "evaluate")
TRAJECTORIES = StageRef("integrate-trajectories", "tasks.trajectories", "integrate_trajectories", "trajectories")
RENDER = StageRef("render", "tasks.render", "render_plots", "render")
REMOTE_CHECKS = 8  # cells whose cache a remote store's check reads at once
Inputs = Callable[[dict[str, Any]], dict[str, Any]]  # a stage's inputs, given its cell's upstream outputs so far


class Stages:
    """Applies a run's settings (result storage, refresh, retries) to stage tasks before they are submitted."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.store: ArtifactStore = artifact_store(config.run.artifacts_dir)
        self.common = {"root": self.store.location, "refresh": config.run.refresh}
        self._records: ManifestRecords | None = None
        self._code_digests: dict[Path, str] = {}  # one run reads each stage's sources once

    def cached(self, ref: StageRef, inputs: dict[str, Any]) -> StageOutput | None:
        """The verified output that a run of ``ref`` with ``inputs`` would take from the cache, found without
        submitting (or importing) it; None where it would compute, and always with ``run.refresh``.

        ``inputs`` must name every input of the stage, defaults too: the key is the one the task computes.
        """
        if self.config.run.refresh:
            return None
        key = stage_key(ref.stage, self._code_digest(ref), inputs)
        try:
            return cached_output(self.store, ref.stage, key)
        except Exception as err:  # a store that fails now (network, NFS): submit the stage, whose reads retry
            get_run_logger().warning("could not check the cache of %s/%s, submitting it: %s", ref.stage, key, err)
            return None

    def _code_digest(self, ref: StageRef) -> str:
        """The code version of the function ``ref``'s task calls, read once per run."""
        code_file = ref.code_file()
        if code_file not in self._code_digests:
            self._code_digests[code_file] = stage_cache.code_digest(code_file)
        return self._code_digests[code_file]

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

    def field_inputs(self, cell: Cell, dataset: Any) -> dict[str, Any]:
        """The inputs of the field stage ``cell`` trains from (every one, for :meth:`cached`): one per model kind
        and init seed, shared by the cells with the same :attr:`Cell.field_key`."""
        return {"dataset": dataset, "model": self.config.seeded_model(cell.seed), "kind": cell.model}

    def cached_fields(self, cells: list[Cell], dataset: StageOutput | None) -> dict[str, StageOutput | None]:
        """The cached output of each field stage ``cells`` train from, by :attr:`Cell.field_key`; None where the
        cache lacks it (and for all of them without a cached ``dataset``)."""
        by_field = {cell.field_key: cell for cell in cells}  # any cell of a field names its inputs
        return {key: dataset and self.cached(BUILD_FIELD, self.field_inputs(cell, dataset))
                for key, cell in by_field.items()}

    def _cell_stages(self, cell: Cell, dataset: Any, field: Any, run_device: str | None
                     ) -> list[tuple[str, StageRef, bool, Inputs]]:
        """``(output name, stage, retryable, inputs)`` of each of ``cell``'s stages, upstream first."""
        config = self.config
        model = config.seeded_model(cell.seed)  # config.model itself unless the grid sweeps seeds
        stages: list[tuple[str, StageRef, bool, Inputs]] = [
            ("trained", TRAIN, True, lambda up: dict(
                dataset=dataset, field=field, model=model, solver=cell.solver, solver_config=config.solver,
                training=config.training, device=cell.device, run_device=run_device, cell_name=cell.name)),
            ("metrics", EVALUATE, True, lambda up: dict(dataset=dataset, trained=up["trained"], model=model)),
        ]
        if cell.model != "deq":  # an equilibrium model has no depth to integrate over
            stages.append(("trajectories", TRAJECTORIES, False, lambda up: dict(
                dataset=dataset, trained=up["trained"], model=model, output=config.output)))
        stages.append(("plots", RENDER, False, lambda up: dict(
            dataset=dataset, trained=up["trained"], trajectories=up.get("trajectories"), model=model,
            output=config.output)))
        return stages

    def submit_cells(self, cells: list[Cell], dataset: Any, fields: dict[str, Any], *, run_device: str | None = None,
                     placements: Sequence[AbstractContextManager] = ()) -> list[dict[str, PrefectFuture]]:
        """Submit train -> (evaluate, trajectories -> render) for each cell; upstreams may be futures.

        Stage by stage across the cells (every training first, then every evaluation, ...), so that a task runner
        that takes what it is given in order (a pool of processes) never holds a stage whose upstream is queued
        behind it.
        ``fields`` maps each :attr:`Cell.field_key` (model kind, and seed) to its field stage's output;
        ``run_device`` is the device as this process names it, when a dispatcher remapped it with
        ``CUDA_VISIBLE_DEVICES``; ``placements`` holds a context per cell that its training is submitted in
        (:func:`flows.placement.training_placements`).
        """
        plans = [self._cell_stages(cell, dataset, fields[cell.field_key], run_device) for cell in cells]
        submitted: list[dict[str, PrefectFuture]] = [{} for _ in cells]
        for depth in range(max(map(len, plans), default=0)):
            for index, (cell, plan, futures) in enumerate(zip(cells, plans, submitted)):
                if depth < len(plan):
                    name, ref, retryable, inputs = plan[depth]
                    run_name = f"{ref.run_name}-{cell.name}"
                    task = self(ref.task(), retryable=retryable, name=run_name)
                    with placements[index] if depth == 0 and placements else nullcontext():
                        futures[name] = remember_name(task.submit(**inputs(futures), **self.common), run_name)
        return submitted

    def cached_cells(self, cells: list[Cell], dataset: StageOutput | None, fields: dict[str, StageOutput | None]
                     ) -> dict[Cell, dict[str, StageOutput]]:
        """:meth:`cached_cell` of each cell whose dataset and field are cached, for those cached in full.

        A remote store's checks are round trips (a manifest read and a listing per stage), so they run
        :data:`REMOTE_CHECKS` cells at a time; a local store's run one after the other.
        """
        candidates = [cell for cell in cells if dataset is not None and fields[cell.field_key] is not None]
        if not candidates:
            return {}
        for ref in (TRAIN, EVALUATE, TRAJECTORIES, RENDER):  # each source read once, before any thread asks
            self._code_digest(ref)
        if self.store.is_local or len(candidates) == 1:
            found = [self.cached_cell(cell, dataset, fields[cell.field_key]) for cell in candidates]
        else:
            # Each check runs in its own copy of this thread's context: the run logger it may warn through
            # needs the flow run (a worker thread's own context is empty).
            contexts = [contextvars.copy_context() for _ in candidates]
            with ThreadPoolExecutor(max_workers=min(REMOTE_CHECKS, len(candidates))) as pool:
                found = list(pool.map(lambda context, cell: context.run(
                    self.cached_cell, cell, dataset, fields[cell.field_key]), contexts, candidates))
        return {cell: outputs for cell, outputs in zip(candidates, found) if outputs is not None}

    def cached_cell(self, cell: Cell, dataset: StageOutput, field: StageOutput) -> dict[str, StageOutput] | None:
        """Every stage output of ``cell`` when all of them are in the cache (verified), else None: a cell that
        :meth:`submit_cells` would only report ``Cached`` is not submitted at all."""
        found: dict[str, Any] = {}
        for name, ref, _, inputs in self._cell_stages(cell, dataset, field, None):
            output = self.cached(ref, inputs(found))
            if output is None:
                return None
            found[name] = output
        return found


def resolve(futures: list[PrefectFuture]) -> list[Any]:
    """Wait for every future, then return their results or raise the failing stage's own error.

    Waiting for all first means a failed cell does not cancel the others' running stages. A stage whose
    upstream failed never runs: Prefect leaves it Pending ("NotReady") and its ``result()`` would raise
    ``UnfinishedRun``. That upstream may be a future the caller did not pass (the dataset, a field), so its
    error is taken from the flow run's in-process record of finished task runs (``run_results``, which
    links each final state to its result, a failed run's being its exception).
    """
    for future in futures:  # each on its own: a runner that resolves inputs first raises an upstream's error here
        try:
            future.wait()
        except Exception:  # noqa: BLE001  (the error is raised below, upstream first)
            pass
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
# The name each submitted task run was given (task_run_name), by task-run id. Prefect creates a run under its
# task's name and renames it when it starts, so the server may still hold the task's name when a cached run
# is marked: renaming from the server's copy would then keep the task's name for good.
_RUN_NAMES: dict[Any, str] = {}


def remember_name(future: PrefectFuture, name: str) -> PrefectFuture:
    """Record the run name ``future``'s task run was submitted with (for :func:`mark_cached`); returns it."""
    _RUN_NAMES[future.task_run_id] = name
    return future


def mark_cached(futures: list[PrefectFuture]) -> None:
    """Rename the task runs that came back ``Cached`` to ``<name> (cached)``, so the run graph tells them apart.

    One read of the task runs and one rename per cached one; a failure to rename only logs a warning.
    """
    given = {future.task_run_id: _RUN_NAMES.pop(future.task_run_id, None) for future in futures}
    cached = [future.task_run_id for future in futures if future.state.name == "Cached"]
    if not cached:
        return
    try:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=cached)))
            for run in runs:
                name = given.get(run.id) or run.name
                if not name.endswith(CACHED_SUFFIX):
                    client.set_task_run_name(run.id, name + CACHED_SUFFIX)
    except Exception as err:  # cosmetic: never fail a run over a name
        get_run_logger().warning("could not mark %d cached task runs in the UI: %s", len(cached), err)


def resolve_cells(cells: list[dict[str, PrefectFuture]], *, upstream: Sequence[PrefectFuture] = ()
                  ) -> list[dict[str, StageOutput]]:
    """:func:`resolve` for the futures of several cells, keeping their shape; ``upstream`` futures (the dataset,
    the fields) are waited for with them and come first, so that their own errors are the ones raised."""
    flat = [future for cell in cells for future in cell.values()]
    values = iter(resolve([*upstream, *flat])[len(upstream):])
    return [{name: next(values) for name in cell} for cell in cells]
