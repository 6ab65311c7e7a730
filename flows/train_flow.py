"""The main job: train Neural ODEs over a model x solver x device x seed grid as a cached, retryable Prefect flow.

    python flows/train_flow.py                      # the torchdyn moons tutorial: dopri5, rk4, tsit5 on CPU
    python flows/train_flow.py --training.epochs 50 --solvers dopri5 euler --devices cpu cuda:0
    python flows/train_flow.py --help

Without ``PREFECT_API_URL`` it starts (or reuses) a persistent local Prefect server, so every task run is
recorded and the run stays viewable in the UI after the script ends; with it, it uses that server.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
if __name__ == "__main__":  # first of all, before any import registers an exit handler (see flows.process_exit)
    from flows.process_exit import skip_finalization

    skip_finalization()

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.config import PipelineConfig
from tasks.grid import Cell, cuda_device_count, grid_cells, resolve_devices, usable_cores
from flows.stages import BUILD_FIELD, GENERATE, Stages, remember_name, resolve, resolve_cells
from tasks.cache import StageOutput
from tasks.offload import stage_processes, worker_processes
from flows.cli import check_artifacts_store
from flows.dispatch import dispatch_cell, pool_and_device
from flows.placement import training_placements
from flows.zombies import ensure_zombie_detection, silence_watch
from tasks.report import publish_report


@flow(name="nodecore-cells")
def cells_flow(config: PipelineConfig, cells: list[Cell], dataset: Optional[StageOutput],
               fields: dict[str, Optional[StageOutput]]) -> list[dict[str, StageOutput]]:
    """The pending cells' stages on this flow's task runner (worker processes or a Dask cluster), and the
    dataset's and fields' where the cache lacks them (None)."""
    placements = training_placements(FlowRunContext.get().task_runner, len(cells))  # spread over Dask's hosts
    return _run_pending(Stages(config), cells, dataset, fields, placements=placements)


def _submit_upstream(stages: Stages, cells: list[Cell], dataset: Any, fields: dict[str, Any]
                     ) -> tuple[Any, dict[str, Any]]:
    """Submit the dataset and the fields ``cells`` need where the cache lacks them (None): futures for those."""
    config = stages.config
    if dataset is None:
        dataset = stages(GENERATE.task(), retryable=True).submit(dataset=config.dataset, **stages.common)
    fields = dict(fields)
    for key, cell in {cell.field_key: cell for cell in cells}.items():  # one field per model kind and seed
        if not fields[key]:
            fields[key] = remember_name(stages(BUILD_FIELD.task(), name=f"build-{key}").submit(
                **stages.field_inputs(cell, dataset), **stages.common), f"build-{key}")
    return dataset, fields


def _run_pending(stages: Stages, cells: list[Cell], dataset: Any, fields: dict[str, Any], *,
                 placements: Sequence[AbstractContextManager] = ()) -> list[dict[str, StageOutput]]:
    """Submit what ``cells`` need (their stages, and the dataset and fields the cache lacks) and wait for it;
    each cell's training in its ``placements`` context, if given."""
    dataset, fields = _submit_upstream(stages, cells, dataset, fields)
    upstream = [future for future in [dataset, *fields.values()] if isinstance(future, PrefectFuture)]
    # The upstream futures first: a dataset or field that failed raises its own error, not a dependent's.
    return resolve_cells(stages.submit_cells(cells, dataset, fields, placements=placements), upstream=upstream)


def _dask_runner(config: PipelineConfig) -> Any:
    from prefect_dask import DaskTaskRunner

    if config.run.dask_address:
        return DaskTaskRunner(address=config.run.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": config.run.dask_workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})


def _process_runner() -> Any:
    """One worker process per core, each importing torch and nodecore as it starts (before its first task)."""
    from prefect.task_runners import ProcessPoolTaskRunner

    return ProcessPoolTaskRunner(max_workers=usable_cores(), initializer=_warm_up)


def _warm_up() -> None:
    import torch

    import tasks.train  # noqa: F401  (torch, nodecore, the solvers)

    torch.set_num_threads(1)  # one core per worker: more threads per process only oversubscribe the cores


@flow(name="nodecore-train", task_runner=ThreadPoolTaskRunner(max_workers=16))
def train_flow(config: PipelineConfig = PipelineConfig()) -> dict[str, Any]:
    """Generate the dataset once, then build, train, evaluate, integrate and render every grid cell.

    What the cache holds in full is read from its verified manifests first and not submitted: a cached cell
    costs a few file reads, not four task runs. Only the rest is submitted, and reports ``Cached`` stages
    where it shares them.
    """
    # Dispatched cells run on other hosts' GPUs: only their workers can tell whether cuda:N exists.
    remote = config.run.executor == "deployments"
    devices = resolve_devices(config.devices, cuda_count=cuda_device_count(), check=not remote)
    cells = grid_cells(config.solvers, devices, config.models, root_finder=config.model.root_finder,
                       seeds=config.grid_seeds())
    check_artifacts_store(config.run.artifacts_dir)  # a run started by Prefect skipped main()'s pre-flight
    stages = Stages(config)
    stages.store.local_root.mkdir(parents=True, exist_ok=True)

    dataset: Any = stages.cached(GENERATE, {"dataset": config.dataset})
    fields: dict[str, Any] = stages.cached_fields(cells, dataset)
    results = stages.cached_cells(cells, dataset, fields)
    pending = [cell for cell in cells if cell not in results]
    get_run_logger().info("%d of %d cells are cached in full (verified manifests): taken without task runs; %d "
                          "to run", len(results), len(cells), len(pending))
    if pending:
        results |= zip(pending, _run_cells(config, stages, pending, dataset, fields))
    return publish_report.submit(stages.store.location, [results[cell] for cell in cells],
                                 link_expiry_seconds=config.run.link_expiry_seconds, names=[c.name for c in cells],
                                 seeds=[config.cell_seed(c.seed) for c in cells]).result()


def _run_cells(config: PipelineConfig, stages: Stages, cells: list[Cell], dataset: StageOutput | None,
               fields: dict[str, StageOutput | None]) -> list[dict[str, StageOutput]]:
    """Run ``cells`` on the configured executor; ``dataset`` and ``fields`` are cached outputs, None where not."""
    if config.run.executor == "threads":
        with worker_processes(stage_processes(config.run.stage_processes, len(cells))):
            return _run_pending(stages, cells, dataset, fields)
    if config.run.executor in ("dask", "processes"):
        runner = _dask_runner(config) if config.run.executor == "dask" else _process_runner()
        return cells_flow.with_options(task_runner=runner)(config, cells, dataset, fields)
    within = ensure_zombie_detection()  # a dead host's cell run is marked Crashed, so its dispatch retries it
    silent_after = silence_watch(within)  # where the server has no automation, each dispatch watches its cell
    if within is not None or silent_after is not None:
        get_run_logger().info("a cell run without a heartbeat for %.0f s is marked Crashed (by %s) and dispatched "
                              "again", within.total_seconds() if within else silent_after,
                              "the server" if within else "its dispatch")
    upstream, by_kind = _submit_upstream(stages, cells, dataset, fields)
    dataset, *outputs = _resolved([upstream, *by_kind.values()])
    by_kind = dict(zip(by_kind, outputs))
    futures, cpu_cells = [], 0
    for cell in cells:
        pool, device, env = pool_and_device(cell, config, cpu_cells)
        cpu_cells += cell.device == "cpu"
        futures.append(dispatch_cell.with_options(task_run_name=f"dispatch-{cell.name}", retries=config.run.retries,
                                                  retry_delay_seconds=config.run.retry_delay_seconds).submit(
            config=config, cell=cell, pool=pool, device=device, env=env, dataset=dataset,
            field=by_kind[cell.field_key], silent_after=silent_after))
    return resolve(futures)


def _resolved(values: list[Any]) -> list[Any]:
    """``values`` with each future replaced by its result (see :func:`resolve`)."""
    results = iter(resolve([value for value in values if isinstance(value, PrefectFuture)]))
    return [next(results) if isinstance(value, PrefectFuture) else value for value in values]


_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def check_dask_reaches_api(config: PipelineConfig, api_url: str | None = None) -> None:
    """Refuse a remote Dask cluster with a loopback Prefect API: prefect-dask ships this process's settings
    with every task, so each worker would call *its own* loopback (and fail, or report to another server).

    Args:
        api_url: the API the run will use; by default the one the user configured or else this checkout's local
            server (a loopback address), known before any server is started.

    Raises:
        ValueError: naming the API URL and what to set instead.
    """
    from urllib.parse import urlsplit

    address = config.run.dask_address
    if config.run.executor != "dask" or not address:
        return
    if api_url is None:
        from flows.server import user_api_url

        api_url = user_api_url() or "http://127.0.0.1/api"  # ensure_server's own server listens on loopback
    scheduler = urlsplit(address if "://" in address else f"tcp://{address}").hostname
    if urlsplit(api_url).hostname in _LOOPBACK and scheduler not in _LOOPBACK:
        raise ValueError(f"the Dask workers at {address} would call the Prefect API at {api_url}, their own "
                         "loopback (prefect-dask sends this process's API URL with every task); set "
                         "PREFECT_API_URL to the server's address as every worker host reaches it")


def print_summary(summary: dict[str, Any], *, ui_url: str | None) -> None:
    """The comparison table on the console: a training this run took from the cache shows as ``cached``."""
    print()
    print(f"{'cell':24} {'test acc':>9} {'train acc':>10} {'nfe f/b':>9} {'train s':>8}  cached stages")
    for row in summary["rows"]:
        trained_now = "trained" not in row["cached"] and row["cached"] != "all"
        seconds = f"{row['train_seconds']:8.1f}" if trained_now else f"{'cached':>8}"
        print(f"{row['cell']:24} {row['test_accuracy']:9.4f} {row['train_accuracy']:10.4f} "
              f"{row['nfe_forward']:>4}/{row['nfe_backward']:<4} {seconds}  {row['cached']}")
    for warning in summary.get("warnings", []):
        print(f"warning: {warning}")
    print(f"\nreport: {summary['report']} (latest: {summary['latest_report']})\nsummary: {summary['summary']}")
    if ui_url:
        print(f"flow run in the Prefect UI: {ui_url}")


def without_flow_heartbeats() -> contextlib.AbstractContextManager[object]:
    """No flow-run heartbeats from this console run, unless ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` asks for them.

    Prefect 3.9 sends them every 180 s by default, for automations that detect crashed runs; the one set up here
    (:mod:`flows.zombies`) watches only dispatched cell runs, which keep theirs. Their thread cost a console run
    0.6-0.9 s at its end (it sleeps in whole seconds before it sees the stop), a third of a fully cached rerun.
    """
    if os.environ.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY"):
        return contextlib.nullcontext()
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def main(argv: list[str] | None = None) -> int:
    from flows.cli import check_artifacts_store, cli_source, parse_config
    from flows.server import ensure_server, prefect_settings_context
    from tasks.faults import validate_faults

    source = cli_source(PipelineConfig, prog="python flows/train_flow.py", description=__doc__.split("\n\n")[0])
    config = parse_config(PipelineConfig, argv, source=source)
    # What the config cannot know: this host's devices and file system, this process's fault hook.
    preflight = {
        "--devices: ": lambda: resolve_devices(config.devices, cuda_count=cuda_device_count(),
                                               check=config.run.executor != "deployments"),
        "--run.artifacts_dir: ": lambda: check_artifacts_store(config.run.artifacts_dir),
        "--run.dask_address: ": lambda: check_dask_reaches_api(config),
        "": validate_faults,  # its message names NODECORE_FAULTS
    }
    for option, check in preflight.items():
        try:
            check()
        except ValueError as err:
            source.root_parser.error(f"{option}{err}")
    server = ensure_server()
    import shlex

    from flows.server import exit_if_api_lost
    from tasks.store import normalise

    rerun = shlex.join(["python", "flows/train_flow.py", *(sys.argv[1:] if argv is None else argv)])
    lost = (f"lost the Prefect API at {server.api_url} (server stopped?); checkpoints are kept in "
            f"{normalise(config.run.artifacts_dir)}; rerun: {rerun}")
    with prefect_settings_context(server), without_flow_heartbeats():
        with exit_if_api_lost(server, lost):  # one line and exit status 3, not minutes of client retries
            state = train_flow(config, return_state=True)
        run_id = state.state_details.flow_run_id
        ui_url = f"{server.ui_url}/runs/flow-run/{run_id}" if server.ui_url else None
        if not state.is_completed():
            print(f"\nthe flow run ended {state.type.value}: {state.message}", file=sys.stderr)
            if ui_url:
                print(f"flow run in the Prefect UI: {ui_url}", file=sys.stderr)
            print(f"rerun the same command, or `prefect flow-run retry {run_id}`: completed stages are reused",
                  file=sys.stderr)
            return 1
        print_summary(state.result(), ui_url=ui_url)
    return 0


if __name__ == "__main__":
    from flows import process_exit

    process_exit.exit(main())
