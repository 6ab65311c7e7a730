"""Running a grid cell on a work pool: a deployment run of the cell flow, pinned to its device."""

from __future__ import annotations

import time
import uuid
from typing import Any

from prefect import get_client, task
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.states import Cancelling

from flows.cell_flow import CELL_FLOW_NAME, SupersededOutput, UnverifiedOutput, read_cell_result
from flows.zombies import crash_if_silent, heartbeat_env
from tasks.config import PipelineConfig
from tasks.grid import Cell
from tasks.cache import StageOutput
from tasks.store import artifact_store


def cell_deployment_name(pool: str) -> str:
    """The cell flow's deployment that runs on work pool ``pool``."""
    return f"cell-{pool}"


def pool_and_device(cell: Cell, config: PipelineConfig, index: int) -> tuple[str, str, dict[str, str]]:
    """Where a cell runs: (work pool, device as the cell's process sees it, extra environment).

    A ``cuda:N`` cell goes to the GPU pool with ``CUDA_VISIBLE_DEVICES=N`` and trains on ``cuda:0``;
    CPU cells take the CPU pools in turn (``index`` counts the CPU cells).
    """
    if cell.device.startswith("cuda"):
        return config.run.gpu_pool, "cuda:0", {"CUDA_VISIBLE_DEVICES": cell.device.partition(":")[2] or "0"}
    pools = config.run.cpu_pools
    return pools[index % len(pools)], cell.device, {}


class CellLost(RuntimeError):
    """A dispatched cell's flow run did not finish in time or crashed: its host may be gone, so run it again."""


def _lost_cells_only(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a dispatch only when its cell was lost; a cell that failed on its own fails the same elsewhere."""
    try:
        state.result()
    except CellLost:
        return True
    except Exception:
        return False
    return False


def wait_for_run(flow_run: Any, *, timeout: float | None, silent_after: float | None = None,
                 poll_seconds: float = 1.0) -> Any:
    """``flow_run`` once it is final, or as it is after ``timeout`` seconds (None: no limit); with ``silent_after``, a
    running one that the server has no event of for that long is set Crashed here first
    (:func:`flows.zombies.crash_if_silent`, checked every ``silent_after / 3`` seconds, 10 at most)."""
    if flow_run.state is not None and flow_run.state.is_final():
        return flow_run
    started = checked = time.monotonic()
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run.id)
            if run.state is not None and run.state.is_final():
                return run
            now = time.monotonic()
            if silent_after is not None and now - checked >= min(silent_after / 3, 10.0):
                checked = now
                if crash_if_silent(client, run, silent_after):
                    return client.read_flow_run(flow_run.id)
            if timeout is not None and now - started >= timeout:
                return run
            time.sleep(poll_seconds)


@task(name="dispatch-cell", cache_policy=NO_CACHE, persist_result=False, retry_condition_fn=_lost_cells_only)
def dispatch_cell(*, config: PipelineConfig, cell: Cell, pool: str, device: str, env: dict[str, str],
                  dataset: StageOutput, field: StageOutput, silent_after: float | None = None
                  ) -> dict[str, StageOutput]:
    """Run ``cell`` as a deployment run on ``pool`` and return its stage outputs.

    A flow run that does not end within ``run.cell_timeout_seconds`` (its host died, or stalled) is cancelled
    and raises :class:`CellLost`, as does one that crashed; the training flow retries those dispatches (any
    worker of the pool may take the new run, and its training resumes from the checkpoint in the store).
    ``silent_after`` (seconds; :func:`flows.zombies.silence_watch`, where the server has no automation for it):
    a running cell run without a heartbeat for that long is crashed by this dispatch itself.

    Raises:
        CellLost: the flow run timed out or crashed, another build of one of its keys replaced an output, or an
            output it names has no verified manifest in the store.
        RuntimeError: the cell's flow run failed or was cancelled (its state and id are in the message).
    """
    store = artifact_store(config.run.artifacts_dir)
    # The store as this host names it (an absolute folder): a relative one would be taken from each worker's cwd.
    config = config.model_copy(update={"run": config.run.model_copy(update={"artifacts_dir": store.location})})
    result_path = f"cells/{uuid.uuid4().hex}.json"  # in the store, where the cell's host writes it
    parameters: dict[str, Any] = {"config": config, "solver": cell.solver, "device": cell.device,
                                  "run_device": device, "dataset": dataset, "field": field,
                                  "result_path": result_path, "model": cell.model}
    if cell.seed is not None:  # only then: a cell deployment made before the seed axis takes no such parameter
        parameters["seed"] = cell.seed
    flow_run = run_deployment(
        f"{CELL_FLOW_NAME}/{cell_deployment_name(pool)}",
        parameters=parameters,
        job_variables={"env": {**heartbeat_env(), **env}},  # it beats as often as the zombie window assumes
        timeout=0,  # created; waited for below
        flow_run_name=f"cell-{cell.name}",
    )
    flow_run = wait_for_run(flow_run, timeout=config.run.cell_timeout_seconds, silent_after=silent_after)
    state = flow_run.state
    if state is None or not state.is_final():  # timed out: do not leave it holding a device
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run.id, Cancelling(message=f"dispatch of {cell.name} timed out"))
        where = (f"no worker took it: is one polling pool {pool!r}?" if state is None or state.is_scheduled()
                 else "its host may be gone")
        raise CellLost(f"cell {cell.name} on work pool {pool!r} did not finish within "
                       f"{config.run.cell_timeout_seconds} s (flow run {flow_run.id}; its cancellation is requested); {where}")
    if state.is_crashed():
        # Crashed by the server for missing heartbeats, its process may yet live (a stalled host): have its worker
        # stop it, so the retry does not race it. From a final state only a forced transition is taken.
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run.id, Cancelling(message=f"{cell.name} crashed; dispatched again"),
                                      force=True)
        raise CellLost(f"cell {cell.name} on work pool {pool!r} crashed (flow run {flow_run.id}): {state.message}")
    if not state.is_completed():
        raise RuntimeError(f"cell {cell.name} on work pool {pool!r} ended {state.type.value} (flow run "
                           f"{flow_run.id}): {state.message}")
    try:
        return read_cell_result(result_path, store)
    except (SupersededOutput, UnverifiedOutput) as err:  # raced by another build of one of its keys (its stages no
        # longer agree), or an output the store no longer vouches for: running the cell again rebuilds what it lacks
        raise CellLost(f"cell {cell.name} (flow run {flow_run.id}): {err}; running it again") from err
    finally:
        store.remove(result_path)
