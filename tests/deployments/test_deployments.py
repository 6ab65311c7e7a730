"""Deployments end to end against a real `prefect server` on loopback: pools, schedules, workers, the UI.

Slowest part of the suite (~2 min): every worker run spawns a process that imports torch and prefect.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment

from deployments.definitions import DEPLOYMENTS, cell_deployment
from deployments.stack import deploy, deploy_all, ensure_work_pools, worker_command
from flows.server import REPO_ROOT, prefect_settings_context
from flows.train_flow import train_flow
from tasks.config import PipelineConfig
from tasks.cache import StageOutput
from tests.deployments.test_multihost import _NO_NETNS

pytestmark = pytest.mark.slow


def tiny(artifacts: Path, **changes) -> dict:
    config = {
        "dataset": {"n_train": 64, "n_test": 64},
        "training": {"epochs": 2, "log_every": 1},
        "output": {"trajectory_samples": 16, "trajectory_points": 5, "plot_samples": 10},
        "solvers": ["euler"],
        "devices": ["cpu"],
        "run": {"artifacts_dir": str(artifacts), "retry_delay_seconds": 0},
    }
    for key, value in changes.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    return config


def run_worker_once(pool: str, env: dict[str, str] | None = None) -> None:
    subprocess.run(worker_command(pool, run_once=True), cwd=REPO_ROOT, env={**os.environ, **(env or {})},
                   check=True, timeout=240, capture_output=True)


def flow_run_and_tasks(run_id) -> tuple[object, dict[str, list[str]]]:
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    states: dict[str, list[str]] = {}
    for task in sorted(tasks, key=lambda t: t.expected_start_time or t.created):
        states.setdefault(task.name.removesuffix(" (cached)"), []).append(task.state.name)
    return run, states


@pytest.fixture(scope="module", autouse=True)
def workers_poll_every_second():
    """The workers these tests start (they inherit the environment) poll their pool every second, not every 10 s."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFECT_WORKER_QUERY_SECONDS", "1")
        yield


@pytest.fixture(scope="module")
def deployed(prefect_server):
    with prefect_settings_context(prefect_server):
        first = deploy_all()
        second = deploy_all()
        yield first, second, prefect_server


def test_deploying_twice_is_idempotent_and_the_nightly_grid_is_scheduled(deployed):
    first, second, _ = deployed
    assert first == second and set(first) == {spec.name for spec in DEPLOYMENTS}
    with get_client(sync_client=True) as client:
        pools = {pool.name: pool.type for pool in client.read_work_pools()}
        nightly = client.read_deployment_by_name("nodecore-train/nightly-grid")
        on_demand = client.read_deployment_by_name("nodecore-train/on-demand")
    assert pools["cpu"] == "process" and pools["gpu"] == "process"
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert nightly.work_pool_name == "cpu" and not on_demand.schedules
    assert nightly.parameters["config"]["solvers"][0] == "dopri5"
    PipelineConfig.model_validate(nightly.parameters["config"])  # deployments pass only valid changes


def stack(*args: str) -> subprocess.CompletedProcess:
    """``python deployments/stack.py ARGS`` as the README writes it, in a new process with the session's server."""
    return subprocess.run([sys.executable, "deployments/stack.py", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def completed_run(deployed, tmp_path_factory):
    """The README's ``stack.py run on-demand --config ...``, then a worker picks the run up."""
    artifacts = tmp_path_factory.mktemp("on_demand")
    started = stack("run", "on-demand", "--config", json.dumps(tiny(artifacts)))
    assert started.returncode == 0, started.stderr[-3000:]
    match = re.search(r"of nodecore-train/on-demand: (http\S+)/runs/flow-run/([0-9a-f-]{36})", started.stdout)
    assert match and match.group(1) == deployed[2].ui_url, started.stdout
    run_worker_once("cpu")
    return UUID(match.group(2)), artifacts


@pytest.mark.parametrize(("args", "expected"), [
    (["run", "no-such"], "unknown deployment 'no-such'; valid: nodecore-train/nightly-grid"),
    (["run", "on-demand", "--config", "{epochs"], "--config is not JSON"),
    (["run", "on-demand", "--config", '{"training": {"epochs": -1}}'], "--config: training.epochs: Input should be"),
])
def test_a_bad_run_command_is_refused_in_one_line(deployed, args: list[str], expected: str) -> None:
    refused = stack(*args)
    assert refused.returncode == 2 and expected in refused.stderr.splitlines()[-1], refused.stderr


def test_a_deployment_run_completes_on_a_worker_with_its_artifacts(completed_run):
    run_id, tmp_path = completed_run
    run, states = flow_run_and_tasks(run_id)
    assert run.state.is_completed(), run.state
    assert {"train-euler@cpu", "evaluate-euler@cpu", "render-euler@cpu", "trajectories-euler@cpu"} <= set(states)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    keys = {artifact.key for artifact in artifacts}
    assert {"nodecore-grid", "nodecore-report"} <= keys
    assert (tmp_path / "report.md").is_file() and (tmp_path / "summary.json").is_file()


def test_a_failed_run_retried_like_the_ui_retry_button_completes_and_reuses_stages(deployed, tmp_path):
    broken = tmp_path / "broken"
    broken.touch()
    run = run_deployment("nodecore-train/on-demand", parameters={"config": tiny(tmp_path / "artifacts")},
                         job_variables={"env": {"NODECORE_FAULTS": f"evaluate:while:{broken}"}}, timeout=0)
    run_worker_once("cpu")
    failed, _ = flow_run_and_tasks(run.id)
    assert failed.state.is_failed() and "injected failure in stage 'evaluate'" in failed.state.message

    broken.unlink()  # the problem is fixed; now press Retry
    from prefect.states import Scheduled

    with get_client(sync_client=True) as client:  # exactly what the UI's Retry button sends
        client.set_flow_run_state(run.id, Scheduled(name="AwaitingRetry", message="Retry from the UI"), force=False)
    run_worker_once("cpu")
    retried, states = flow_run_and_tasks(run.id)
    assert retried.state.is_completed() and retried.run_count == 2
    assert states["train-euler@cpu"] == ["Completed", "Cached"]
    with get_client(sync_client=True) as client:  # the cached one says so in the run graph
        names = {t.name for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))}
    assert "train-euler@cpu (cached)" in names
    assert states["evaluate-euler@cpu"] == ["Failed", "Completed"]


@pytest.mark.skipif(_NO_NETNS is None, reason="covered by tests/deployments/test_multihost.py, with real "
                    "network-namespace hosts, on this machine")
def test_cells_dispatched_to_two_pools_run_on_the_workers_of_those_pools(deployed, tmp_path):
    """Two hosts on loopback: a worker per pool, labelled; each cell reports who trained it (where the
    machine cannot build network-namespace hosts)."""
    ensure_work_pools(["host-a", "host-b"])
    for pool in ("host-a", "host-b"):
        deploy(cell_deployment(pool))
    workers = [subprocess.Popen(worker_command(pool), cwd=REPO_ROOT, start_new_session=True,
                                env={**os.environ, "NODECORE_HOST_LABEL": f"worker-of-{pool}"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for pool in ("host-a", "host-b")]
    try:
        config = PipelineConfig.model_validate(tiny(tmp_path, solvers=["euler", "rk4"], run={
            "executor": "deployments", "cpu_pools": ["host-a", "host-b"], "cell_timeout_seconds": 240}))
        summary = train_flow(config)
    finally:
        for worker in workers:
            _stop(worker)
    cells = {c["trained"]["data"]["solver"]: c["trained"]["data"]["host"]
             for c in __import__("json").loads((tmp_path / "summary.json").read_text())["cells"]}
    assert cells == {"euler": "worker-of-host-a", "rk4": "worker-of-host-b"}
    assert [row["cell"] for row in summary["rows"]] == ["euler@cpu", "rk4@cpu"]


def _stop(worker: subprocess.Popen) -> None:
    """End a worker's process group: SIGTERM, and SIGKILL if it is still shutting down (a loaded CI machine) after
    30 s."""
    os.killpg(worker.pid, 15)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, 9)
        worker.wait(timeout=30)


def test_seeded_cells_are_dispatched_with_their_seeds_and_train_from_their_own_fields(deployed, tmp_path):
    """``seeds`` with ``run.executor=deployments``: each cell's flow run on the pool carries its seed and trains from
    that seed's field stage; the rows carry the seeds."""
    worker = subprocess.Popen(worker_command("cpu"), cwd=REPO_ROOT, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        config = PipelineConfig.model_validate(tiny(tmp_path, seeds=[0, 1], run={
            "executor": "deployments", "cell_timeout_seconds": 240}))
        summary = train_flow(config)
    finally:
        _stop(worker)
    assert [(row["cell"], row["seed"]) for row in summary["rows"]] == [("euler@cpu#s0", 0), ("euler@cpu#s1", 1)]
    names = ["cell-euler@cpu#s0", "cell-euler@cpu#s1"]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name={"any_": names}))
    assert {run.name: (run.parameters["seed"], run.state.name) for run in runs} == {
        names[0]: (0, "Completed"), names[1]: (1, "Completed")}
    cells = json.loads((tmp_path / "summary.json").read_text())["cells"]
    assert len({cell["trained"]["key"] for cell in cells}) == 2
    assert len(list((tmp_path / "build-vector-field").iterdir())) == 2  # a field (initial weights) per seed


def test_a_cell_no_worker_takes_is_cancelled_redispatched_and_then_named(deployed, tmp_path):
    """A lost cell (here: no worker polls its pool) is cancelled at its timeout and dispatched again."""
    ensure_work_pools(["nobody"])
    deploy(cell_deployment("nobody"))
    config = PipelineConfig.model_validate(tiny(tmp_path, run={
        "executor": "deployments", "cpu_pools": ["nobody"], "cell_timeout_seconds": 2, "retries": 1}))
    state = train_flow(config, return_state=True)
    assert state.is_failed() and "no worker took it: is one polling pool 'nobody'?" in state.message, state.message
    run, states = flow_run_and_tasks(state.state_details.flow_run_id)
    assert states["dispatch-euler@cpu"][-1] == "Failed"
    with get_client(sync_client=True) as client:
        (dispatch,) = [t for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
            any_=[run.id]))) if t.name == "dispatch-euler@cpu"]
        deployment = client.read_deployment_by_name("nodecore-cell/cell-nobody")
        cells = client.read_flow_runs(flow_run_filter=FlowRunFilter(deployment_id={"any_": [deployment.id]}))
    assert dispatch.run_count == 2  # dispatched, lost, dispatched again
    assert len(cells) == 2 and all(c.state.name in ("Cancelling", "Cancelled") for c in cells), cells


@pytest.mark.skipif(_NO_NETNS is None, reason="covered by tests/deployments/test_multihost.py: a real dask scheduler "
                    "and workers on network-namespace hosts, on this machine")
def test_the_grid_fans_out_on_a_dask_local_cluster(prefect_server, tmp_path):
    with prefect_settings_context(prefect_server):
        config = PipelineConfig.model_validate(tiny(tmp_path, solvers=["euler", "midpoint"],
                                                    run={"executor": "dask", "dask_workers": 2}))
        summary = train_flow(config)
    assert sorted(row["cell"] for row in summary["rows"]) == ["euler@cpu", "midpoint@cpu"]
    assert all(0 <= row["test_accuracy"] <= 1 for row in summary["rows"])


def test_the_grid_runs_on_worker_processes(prefect_server, tmp_path, monkeypatch):
    """``run.executor=processes``: the stages run in a pool of worker processes (true parallelism on the cores);
    a stage that fails there fails the run with its own error, and the rerun reuses what completed."""
    real_host = socket.gethostname()
    monkeypatch.delenv("NODECORE_HOST_LABEL", raising=False)
    monkeypatch.setattr(socket, "gethostname", lambda: "the flow's own process")  # patches this process only
    monkeypatch.setenv("NODECORE_FAULTS", "evaluate:permanent")  # the workers inherit the environment
    config = PipelineConfig.model_validate(tiny(tmp_path, solvers=["euler", "midpoint"], run={"executor": "processes"}))
    with prefect_settings_context(prefect_server):
        failed = train_flow(config, return_state=True)
    assert failed.is_failed() and "injected permanent failure in stage 'evaluate'" in failed.message, failed.message

    monkeypatch.delenv("NODECORE_FAULTS")
    with prefect_settings_context(prefect_server):
        summary = train_flow(config)
    assert [row["cell"] for row in summary["rows"]] == ["euler@cpu", "midpoint@cpu"]
    assert [row["cached"] for row in summary["rows"]] == ["trained, trajectories, plots"] * 2  # evaluate redone
    cells = json.loads((tmp_path / "summary.json").read_text())["cells"]
    assert {cell["trained"]["data"]["host"] for cell in cells} == {real_host}  # trained in another process


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = REPO_ROOT / "artifacts" / "ui"
# [text of a page's first table's last header, how far (px) it reaches past the table's container]
LAST_HEADER_OVERFLOW = """() => { const t = document.querySelector('table');
    const last = [...t.querySelectorAll('th')].pop();
    return [last.innerText.trim(), last.getBoundingClientRect().right - t.parentElement.getBoundingClientRect().right]; }"""


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_prefect_ui_shows_the_run_its_stages_and_the_report_with_rendered_plots(completed_run, deployed):
    from playwright.sync_api import sync_playwright

    run_id, _ = completed_run
    ui = deployed[2].ui_url
    run, states = flow_run_and_tasks(run_id)
    with get_client(sync_client=True) as client:
        report = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])), limit=50)
    report_id = next(a.id for a in report if a.key == "nodecore-report")
    grid_id = next(a.id for a in report if a.key == "nodecore-grid")
    assert all(a.key for a in report), [a.type for a in report if not a.key]  # every card has a title
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{ui}/runs/flow-run/{run_id}", wait_until="networkidle")
        page.wait_for_timeout(1500)  # the run graph is drawn on a canvas after the data arrives
        page.screenshot(path=SCREENSHOTS / "flow-run.png")
        assert run.name in page.inner_text("body") and "Completed" in page.inner_text("body")
        page.get_by_text("Task Runs", exact=True).first.click()
        page.wait_for_selector('a[href*="/runs/task-run/"]')
        listed = " ".join(page.locator('a[href*="/runs/task-run/"]').all_inner_texts())
        for stage in ("train-euler@cpu", "evaluate-euler@cpu", "trajectories-euler@cpu", "render-euler@cpu"):
            assert stage in listed
        page.screenshot(path=SCREENSHOTS / "flow-run-task-runs.png")

        page.get_by_text("Artifacts", exact=True).last.click()
        page.wait_for_function("document.body.innerText.includes('nodecore-grid')")
        artifacts_text = page.inner_text("body")
        assert "nodecore-report" in artifacts_text and "nodecore-grid" in artifacts_text
        page.screenshot(path=SCREENSHOTS / "flow-run-artifacts.png")

        page.goto(f"{ui}/artifacts/artifact/{grid_id}", wait_until="networkidle")
        page.wait_for_function("document.body.innerText.includes('euler@cpu')")
        table_text = page.inner_text("body")
        table_overflow = page.evaluate(LAST_HEADER_OVERFLOW)
        page.screenshot(path=SCREENSHOTS / "table.png", full_page=True)

        page.goto(f"{ui}/artifacts/artifact/{report_id}", wait_until="networkidle")
        page.wait_for_function("[...document.images].filter(i => i.alt).every(i => i.complete)")
        widths = page.eval_on_selector_all("img[alt]", "imgs => imgs.map(i => [i.alt, i.naturalWidth])")
        # the report's table fits its column: the last header ("cached") is not cut off
        overflow = page.evaluate(LAST_HEADER_OVERFLOW)
        report_text = page.inner_text("body")
        page.screenshot(path=SCREENSHOTS / "report.png", full_page=True)
        browser.close()
    assert overflow[0] == "cached" and overflow[1] <= 1, overflow
    assert table_overflow[0] == "cached" and table_overflow[1] <= 1, table_overflow
    for text in (table_text, report_text):  # numbers are rounded for reading
        assert not re.findall(r"\d\.\d{5,}", text), re.findall(r"\d\.\d{5,}", text)
    assert "test acc" in table_text
    plots = {alt: width for alt, width in widths if alt in ("depth", "state_space", "vector_field",
                                                            "decision_boundary")}
    assert set(plots) == {"depth", "state_space", "vector_field", "decision_boundary"}, widths
    assert all(width > 0 for width in plots.values()), widths
