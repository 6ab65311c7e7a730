"""Helpers for the pipeline tests: a tiny config, running the flow in-process or as a script, reading runs back."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import StateType, TaskRun
from prefect.settings import (
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    PREFECT_RESULTS_LOCAL_STORAGE_PATH,
    temporary_settings,
)
from prefect.states import State

from flows.cli import parse_config
from tasks.config import PipelineConfig
from flows.server import ServerInfo, prefect_settings_context

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGE_TASKS = ("generate-dataset", "build-node")  # the field stage runs once per model kind
CELL_TASKS = ("train", "evaluate", "trajectories", "render")
FINISHED = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}

# The tiny grid of every pipeline test, as command-line options (the CLI is the user's way in).
TINY_ARGV = [
    "--dataset.n_train", "64", "--dataset.n_test", "64",
    "--training.epochs", "4", "--training.checkpoint_every", "2", "--training.log_every", "2",
    "--output.trajectory_samples", "32", "--output.trajectory_points", "5", "--output.plot_samples", "20",
    "--devices", "cpu", "--run.retries", "2", "--run.retry_delay_seconds", "0",
]
SOLVERS = ["euler", "rk4"]


def tiny_argv(artifacts_dir: Path, *extra: str, solvers: list[str] = SOLVERS) -> list[str]:
    return [*TINY_ARGV, "--solvers", *solvers, "--run.artifacts_dir", str(artifacts_dir), *extra]


def tiny_config(artifacts_dir: Path, *extra: str, solvers: list[str] = SOLVERS) -> PipelineConfig:
    """The tiny config, parsed from the same options the CLI tests pass (so the two cannot drift apart)."""
    return parse_config(PipelineConfig, tiny_argv(artifacts_dir, *extra, solvers=solvers))


def cells(solvers: list[str] = SOLVERS) -> list[str]:
    return [f"{solver}@cpu" for solver in solvers]


def expected_task_labels(solvers: list[str] = SOLVERS, *, report: bool = True) -> set[str]:
    labels = {*STAGE_TASKS, *(f"{stage}-{cell}" for cell in cells(solvers) for stage in CELL_TASKS)}
    return labels | {"report"} if report else labels


@contextlib.contextmanager
def flow_settings(info: ServerInfo, results: Path) -> Iterator[None]:
    """Point Prefect at the session server, keep default result storage in ``results``, no heartbeats."""
    with prefect_settings_context(info), temporary_settings(
        updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None, PREFECT_RESULTS_LOCAL_STORAGE_PATH: str(results)}
    ):
        yield


def run_flow(info: ServerInfo, config: PipelineConfig) -> State:
    """Run ``train_flow(config)`` in this process against the session server; return its final state."""
    from flows.train_flow import train_flow

    with flow_settings(info, Path(config.run.artifacts_dir).parent / "prefect-storage"):
        return train_flow(config, return_state=True)


def run_cli(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``python flows/train_flow.py ARGV`` in a new process with the session's environment (and ``env``)."""
    return subprocess.run(
        [sys.executable, "flows/train_flow.py", *argv],
        cwd=REPO_ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout,
    )


def flow_run_id_from_output(output: str) -> UUID:
    """The flow run id in the ``flow run in the Prefect UI: .../runs/flow-run/<id>`` line the CLI prints."""
    match = re.search(r"/runs/flow-run/([0-9a-f-]{36})", output)
    assert match, f"no flow run link in the output:\n{output[-3000:]}"
    return UUID(match.group(1))


def label(task_run: TaskRun) -> str:
    """``train-euler@cpu`` for a cell's task run; the task name (without Prefect's suffix) otherwise.

    The `` (cached)`` mark a cached task run gets (flows.stages.mark_cached) is not part of the label.
    """
    name = task_run.name.removesuffix(" (cached)")
    return name if "@" in name else re.sub(r"-[0-9a-f]{3}$", "", name)


def task_runs(
    info: ServerInfo,
    flow_run_id: UUID,
    *,
    count: int,
    settled: Callable[[list[TaskRun]], bool] = lambda runs: all(r.state_type in FINISHED for r in runs),
    timeout: float = 30,
) -> dict[str, TaskRun]:
    """The flow run's task runs by :func:`label`, once ``count`` are stored and ``settled`` (states arrive async)."""
    with prefect_settings_context(info), get_client(sync_client=True) as client:
        deadline = time.monotonic() + timeout
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            if len(runs) == count and settled(runs):
                break
            assert time.monotonic() < deadline, f"task runs stored: {sorted((r.name, r.state_name) for r in runs)}"
            time.sleep(0.25)
    by_label = {label(run): run for run in runs}
    assert len(by_label) == len(runs), sorted(run.name for run in runs)
    return by_label


def state_names(runs: dict[str, TaskRun]) -> dict[str, str | None]:
    return {name: run.state_name for name, run in runs.items()}


def state_history(info: ServerInfo, task_run: TaskRun) -> list[str]:
    with prefect_settings_context(info), get_client(sync_client=True) as client:
        return [state.name for state in client.read_task_run_states(task_run.id)]


def read_flow_run(info: ServerInfo, flow_run_id: UUID) -> Any:
    with prefect_settings_context(info), get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def stage_folders(root: Path, stage: str) -> set[str]:
    """The cache keys (folder names) present under ``<root>/<stage>``."""
    folder = root / stage
    return {p.name for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()
