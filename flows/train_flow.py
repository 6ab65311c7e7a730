"""The main job: train Neural ODEs over a solver x device grid as a cached, retryable Prefect flow.

    python flows/train_flow.py                      # the torchdyn moons tutorial: dopri5, rk4, tsit5 on CPU
    python flows/train_flow.py --training.epochs 50 --solvers dopri5 euler --devices cpu cuda:0
    python flows/train_flow.py --help

Without ``PREFECT_API_URL`` it starts (or reuses) a persistent local Prefect server, so every task run is
recorded and the run stays viewable in the UI after the script ends; with it, it uses that server.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from prefect import flow, get_client
from prefect.futures import PrefectFuture, wait
from prefect.task_runners import ThreadPoolTaskRunner

from flows.config import PipelineConfig
from flows.grid import device_slot_limits, grid_cells, resolve_devices
from tasks.cache import RESULTS_DIR
from tasks.evaluate import evaluate_cell
from tasks.field import build_vector_field
from tasks.generate import generate_dataset
from tasks.render import render_plots
from tasks.report import publish_report
from tasks.train import train_cell
from tasks.trajectories import integrate_trajectories


def ensure_device_limits(limits: dict[str, int]) -> None:
    """Create or update the global concurrency limits that give each training its device."""
    with get_client(sync_client=True) as client:
        for name, limit in limits.items():
            client.upsert_global_concurrency_limit_by_name(name=name, limit=limit)


def _stage_options(config: PipelineConfig, root: Path, *, retryable: bool) -> dict[str, Any]:
    options: dict[str, Any] = {"result_storage": root / RESULTS_DIR, "refresh_cache": config.run.refresh}
    if retryable:
        delays = [config.run.retry_delay_seconds * 2**i for i in range(config.run.retries)]
        options |= {"retries": config.run.retries, "retry_delay_seconds": delays or 0}
    return options


@flow(name="nodecore-train", task_runner=ThreadPoolTaskRunner(max_workers=16))
def train_flow(config: PipelineConfig = PipelineConfig()) -> dict[str, Any]:
    """Generate the dataset once, then build, train, evaluate, integrate and render every grid cell."""
    devices = resolve_devices(config.devices, cuda_count=torch.cuda.device_count())
    cells = grid_cells(config.solvers, devices)
    ensure_device_limits(device_slot_limits(devices))
    root = Path(config.run.artifacts_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    common = {"root": str(root), "refresh": config.run.refresh}

    def stage(task: Any, retryable: bool = False) -> Any:
        return task.with_options(**_stage_options(config, root, retryable=retryable))

    dataset = stage(generate_dataset, True).submit(dataset=config.dataset, **common)
    field = stage(build_vector_field).submit(dataset=dataset, model=config.model, **common)
    results: list[dict[str, PrefectFuture]] = []
    for cell in cells:
        trained = stage(train_cell, True).with_options(task_run_name=f"train-{cell.name}").submit(
            dataset=dataset, field=field, model=config.model, solver=cell.solver, solver_config=config.solver,
            training=config.training, device=cell.device, **common)
        metrics = stage(evaluate_cell, True).with_options(task_run_name=f"evaluate-{cell.name}").submit(
            dataset=dataset, trained=trained, model=config.model, **common)
        trajectories = stage(integrate_trajectories).with_options(task_run_name=f"trajectories-{cell.name}").submit(
            dataset=dataset, trained=trained, model=config.model, output=config.output, **common)
        plots = stage(render_plots).with_options(task_run_name=f"render-{cell.name}").submit(
            dataset=dataset, trained=trained, trajectories=trajectories, model=config.model, output=config.output,
            **common)
        results.append({"trained": trained, "metrics": metrics, "trajectories": trajectories, "plots": plots})
    # Let every stage finish (a failed cell must not cancel the others' running stages), then fail with the
    # first stage's own error rather than the report's "upstream task did not complete".
    stages = [dataset, field, *(future for cell_futures in results for future in cell_futures.values())]
    wait(stages)
    for future in stages:
        future.result()
    return publish_report.submit(str(root), results).result()


def print_summary(summary: dict[str, Any], *, ui_url: str | None) -> None:
    print()
    print(f"{'cell':24} {'test acc':>9} {'train acc':>10} {'nfe f/b':>9} {'train s':>8}")
    for row in summary["rows"]:
        print(f"{row['cell']:24} {row['test_accuracy']:9.4f} {row['train_accuracy']:10.4f} "
              f"{row['nfe_forward']:>4}/{row['nfe_backward']:<4} {row['train_seconds']:8.1f}")
    print(f"\nreport: {summary['report']}\nsummary: {summary['summary']}")
    if ui_url:
        print(f"flow run in the Prefect UI: {ui_url}")


def main(argv: list[str] | None = None) -> int:
    from flows.cli import build_parser, parse_config
    from flows.server import ensure_server, prefect_settings_context

    parser = build_parser(PipelineConfig, prog="python flows/train_flow.py", description=__doc__.split("\n\n")[0])
    config, _ = parse_config(PipelineConfig, argv, parser=parser)
    try:
        resolve_devices(config.devices, cuda_count=torch.cuda.device_count())
    except ValueError as err:
        parser.error(f"--devices: {err}")
    server = ensure_server()
    with prefect_settings_context(server):
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
    sys.exit(main())
