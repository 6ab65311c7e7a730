"""Tests for flows.server against real local Prefect servers started for the module.

The module server is started by a child process that imports Prefect *before* calling
ensure_server and then runs a flow with three tasks, so the fixture alone checks that the server
outlives its starter and that ensure_server works after ``import prefect``. A second checkout's
server (another home) is then started the same way with the module server on its port: it must not
reuse it. Tests run in file order; the stop test comes last, and the fixtures stop their servers at
teardown whatever happened.
"""

from __future__ import annotations

import ast
import http.server
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import prefect.context
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Failed

import tasks.faults
from flows import server
from flows.server import (
    ServerInfo,
    ensure_server,
    find_server,
    is_healthy,
    server_env,
    server_home,
    stop_server,
)
from flows.processes import read_pid
from nodecore.checkpoints import load_checkpoint
from tasks.faults import is_retryable
from tests.flows._pipeline import tiny_argv

REPO_ROOT = Path(__file__).resolve().parents[2]
# Everything through which a developer's own Prefect configuration could leak into a test.
_ISOLATED_KEYS = (
    "PREFECT_API_URL",
    "PREFECT_UI_URL",
    "PREFECT_HOME",
    "PREFECT_PROFILE",
    server.PORT_ENV,
    server.HOME_ENV,
    server.MANAGED_ENV,
)

_CHILD = """
import json, sys
from pathlib import Path

import prefect  # first: Prefect caches its settings at import; ensure_server must refresh them
from prefect import flow, task

from flows.server import ensure_server


@task
def double(x: int) -> int:
    return 2 * x


@flow
def tiny() -> int:
    return sum(double(i) for i in range(3))


lines = []
info = ensure_server(home=Path(sys.argv[1]), port=int(sys.argv[2]), log=lines.append)
state = tiny(return_state=True)
print(json.dumps({"started": info.started, "api_url": info.api_url, "lines": lines,
                  "flow_run_id": str(state.state_details.flow_run_id), "result": state.result()}))
"""


def _free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _isolated(env: dict[str, str], profiles: Path) -> dict[str, str]:
    """Return ``env`` without the user's Prefect configuration and with an empty profiles file."""
    clean = {key: value for key, value in env.items() if key not in _ISOLATED_KEYS}
    return {**clean, "PREFECT_PROFILES_PATH": str(profiles), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def _run_child(home: Path, port: int) -> dict[str, Any]:
    """Run ``_CHILD`` (ensure_server, then a 3-task flow) for ``home`` and ``port``; return its report."""
    env = _isolated(dict(os.environ), home / "profiles.toml")
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(home), str(port)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert child.returncode == 0, child.stderr[-4000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Start the module's server from a child process that then runs a 3-task flow and exits."""
    home = tmp_path_factory.mktemp("prefect_home")
    port = _free_port()
    try:
        yield {"home": home, "port": port, **_run_child(home, port)}
    finally:
        stop_server(home=home)


@pytest.fixture
def isolated_env(tmp_path: Path) -> Iterator[None]:
    """Run a test with no user Prefect configuration; restore os.environ and Prefect's settings."""
    saved_env, saved_settings = dict(os.environ), prefect.context.GLOBAL_SETTINGS_CONTEXT
    os.environ.clear()
    os.environ.update(_isolated(saved_env, tmp_path / "profiles.toml"))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        prefect.context.GLOBAL_SETTINGS_CONTEXT = saved_settings


# --- no server needed ----------------------------------------------------------------------------


def test_server_env_points_at_the_local_port(tmp_path: Path) -> None:
    assert server_env(tmp_path, 4321) == {
        "PREFECT_HOME": str(tmp_path),
        "PREFECT_API_URL": "http://127.0.0.1:4321/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_URL": "http://127.0.0.1:4321",
    }


def test_is_healthy_is_false_when_nothing_listens() -> None:
    assert not is_healthy(f"http://127.0.0.1:{_free_port()}/api", timeout=0.5)


def test_user_supplied_url_is_used_untouched(
    isolated_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.example:4200/api")
    lines: list[str] = []
    info = ensure_server(home=tmp_path, port=_free_port(), log=lines.append)
    assert info == ServerInfo(
        api_url="http://prefect.example:4200/api",
        ui_url="http://prefect.example:4200",
        started=False,
        home=None,
        user_supplied=True,
    )
    assert os.environ["PREFECT_API_URL"] == "http://prefect.example:4200/api"
    assert "PREFECT_HOME" not in os.environ
    assert not list(tmp_path.iterdir())  # no pid file, log or DB: nothing was started
    assert len(lines) == 1 and "http://prefect.example:4200/api" in lines[0]


def test_no_package_imports_another_packages_private_names() -> None:
    """E.g. deployments/stack.py uses only flows.server's public names (``_x``; dunders are public)."""
    packages = ("nodecore", "tasks", "flows", "deployments", "bench")
    found = []
    for path in sorted(p for package in packages for p in (REPO_ROOT / package).glob("**/*.py")):
        own = path.relative_to(REPO_ROOT).parts[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            else:
                continue
            for dotted in imported:
                top, *rest = dotted.split(".")
                if top in packages and top != own and any(p.startswith("_") and not p.startswith("__") for p in rest):
                    found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} imports {dotted}")
    assert not found, found


# --- the module's server -------------------------------------------------------------------------


def test_started_server_outlives_the_process_that_started_it(local_server: dict[str, Any]) -> None:
    assert local_server["started"] is True
    assert local_server["api_url"] == f"http://127.0.0.1:{local_server['port']}/api"
    assert is_healthy(local_server["api_url"])  # the starting child has exited
    pid = int((local_server["home"] / "server.pid").read_text())
    os.kill(pid, 0)  # still running


def test_flow_run_and_all_task_runs_are_recorded(local_server: dict[str, Any]) -> None:
    assert local_server["result"] == 0 + 2 + 4
    flow_run_id = UUID(local_server["flow_run_id"])
    with temporary_settings(updates={PREFECT_API_URL: local_server["api_url"]}):
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 30  # task-run states arrive as events, stored async
            while True:
                flow_run = client.read_flow_run(flow_run_id)
                task_runs = client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
                )
                states = sorted((run.name, run.state_type) for run in task_runs)
                if len(states) == 3 and all(s is StateType.COMPLETED for _, s in states):
                    break
                assert time.monotonic() < deadline, f"task runs stored: {states}"
                time.sleep(0.5)
    assert flow_run.state_type is StateType.COMPLETED
    assert flow_run.flow_id is not None and len({name for name, _ in states}) == 3
    assert all(name.startswith("double-") for name, _ in states)


def test_second_call_reuses_the_running_server(
    local_server: dict[str, Any], isolated_env: None
) -> None:
    lines: list[str] = []
    began = time.monotonic()
    info = ensure_server(home=local_server["home"], port=local_server["port"], log=lines.append)
    assert time.monotonic() - began < 5
    assert info == ServerInfo(
        api_url=local_server["api_url"],
        ui_url=f"http://127.0.0.1:{local_server['port']}",
        started=False,
        home=local_server["home"],
        user_supplied=False,
    )
    assert lines == [f"reusing local Prefect server at {info.ui_url}"]
    for key, value in server_env(local_server["home"], local_server["port"]).items():
        assert os.environ[key] == value
    # Prefect was imported before the call: its global settings were refreshed too.
    assert prefect.context.GLOBAL_SETTINGS_CONTEXT.settings.api.url == info.api_url
    # A second call in the same process sees its own URL, not a user-supplied one.
    assert ensure_server(home=local_server["home"], port=local_server["port"], log=lines.append) == info


def test_cli_status_reports_the_running_server(local_server: dict[str, Any]) -> None:
    argv = ["--port", str(local_server["port"]), "--home", str(local_server["home"])]
    status = subprocess.run(
        [sys.executable, "flows/server.py", "status", *argv], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"healthy: {local_server['api_url']} (pid ")


# --- another checkout's server on the port -------------------------------------------------------


class _HealthOnly(http.server.BaseHTTPRequestHandler):
    """Answers ``GET /api/health`` with ``true`` as Prefect does, and 404 to everything else."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        found = self.path == "/api/health"
        self.send_response(200 if found else 404)
        self.end_headers()
        self.wfile.write(b"true" if found else b"")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def impostor() -> Iterator[int]:
    """A plain HTTP server on a free port that passes Prefect's health check; yields its port."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HealthOnly)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def _cli_status(home: Path, port: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "flows/server.py", "status", "--home", str(home), "--port", str(port)],
                          cwd=REPO_ROOT, env=_isolated(dict(os.environ), home / "profiles.toml"),
                          capture_output=True, text=True)


def test_a_healthy_answer_alone_is_not_this_checkouts_server(impostor: int, tmp_path: Path) -> None:
    api_url = f"http://127.0.0.1:{impostor}/api"
    assert is_healthy(api_url) and server_home(api_url) is None
    assert find_server(home=tmp_path, port=impostor) is None
    status = _cli_status(tmp_path, impostor)
    assert status.returncode == 1
    assert status.stdout.strip() == (f"not running: {api_url} answers, but it is a server that does not report "
                                     f"its PREFECT_HOME, not this checkout's (PREFECT_HOME={tmp_path.resolve()})")


def test_status_does_not_credit_another_checkouts_server(local_server: dict[str, Any], tmp_path: Path) -> None:
    assert server_home(local_server["api_url"]) == local_server["home"].resolve()
    status = _cli_status(tmp_path, local_server["port"])
    assert status.returncode == 1
    assert status.stdout.strip() == (
        f"not running: {local_server['api_url']} answers, but it is another Prefect server "
        f"(PREFECT_HOME={local_server['home'].resolve()}), not this checkout's (PREFECT_HOME={tmp_path.resolve()})")


@pytest.fixture(scope="module")
def moved_server(local_server: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Another checkout (home) whose port is the module server's: its child starts its own server elsewhere."""
    home = tmp_path_factory.mktemp("other_checkout") / ".prefect"
    try:
        yield {"home": home, "foreign": local_server, **_run_child(home, local_server["port"])}
    finally:
        stop_server(home=home)


def test_a_foreign_server_is_not_reused_and_the_new_port_is_said(moved_server: dict[str, Any]) -> None:
    foreign, home = moved_server["foreign"], moved_server["home"].resolve()
    assert moved_server["started"] is True
    port = int(moved_server["api_url"].split(":")[-1].removesuffix("/api"))
    assert port != foreign["port"] and (home / "server.port").read_text().strip() == str(port)
    assert server_home(moved_server["api_url"]) == home
    (line,) = moved_server["lines"]
    assert line.startswith(f"port {foreign['port']} is taken by another Prefect server "
                           f"(PREFECT_HOME={foreign['home'].resolve()}), so started a local Prefect server at "
                           f"http://127.0.0.1:{port} (PREFECT_HOME={home})")
    # The flow run went to this checkout's server, not into the foreign server's database.
    flow_run_id = UUID(moved_server["flow_run_id"])
    with temporary_settings(updates={PREFECT_API_URL: moved_server["api_url"]}):
        with get_client(sync_client=True) as client:
            assert client.read_flow_run(flow_run_id).id == flow_run_id
    with temporary_settings(updates={PREFECT_API_URL: foreign["api_url"]}):
        with get_client(sync_client=True) as client, pytest.raises(ObjectNotFound):
            client.read_flow_run(flow_run_id)
    status = _cli_status(home, foreign["port"])  # the recorded port is found first
    assert status.returncode == 0 and status.stdout.startswith(f"healthy: {moved_server['api_url']} (pid ")


# --- losing the server mid-run -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "wrapped", "retryable"),
    [("http://127.0.0.1:4999/api/artifacts/", False, False), ("http://127.0.0.1:4999/api/logs/", True, False),
     ("http://data.example/moons.parquet", False, True), (None, False, True)],
)
def test_a_lost_api_is_not_retried(url: str | None, wrapped: bool, retryable: bool) -> None:
    error = httpx.ConnectError("All connection attempts failed", request=httpx.Request("GET", url) if url else None)
    if wrapped:
        try:
            try:
                raise error
            except httpx.ConnectError as cause:
                raise RuntimeError("could not update the progress artifact") from cause
        except RuntimeError as outer:
            error = outer
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4999/api"}):
        assert is_retryable(None, None, Failed(data=error)) is retryable


@pytest.mark.slow
def test_losing_the_server_mid_training_exits_at_once_and_keeps_the_checkpoint(
    moved_server: dict[str, Any], tmp_path: Path
) -> None:
    home, foreign_port = moved_server["home"], moved_server["foreign"]["port"]
    artifacts = tmp_path / "artifacts"
    argv = tiny_argv(artifacts, "--training.epochs", "100000", "--training.checkpoint_every", "5",
                     "--training.log_every", "100000", solvers=["euler"])
    env = {**_isolated(dict(os.environ), tmp_path / "profiles.toml"),
           server.HOME_ENV: str(home), server.PORT_ENV: str(foreign_port)}
    env.pop(tasks.faults.ENV, None)
    with open(tmp_path / "out", "w+") as out, open(tmp_path / "err", "w+") as err:
        run = subprocess.Popen([sys.executable, "flows/train_flow.py", *argv], cwd=REPO_ROOT, env=env,
                               stdout=out, stderr=err, text=True)
        try:
            deadline = time.monotonic() + 180
            while not (resume := sorted(artifacts.glob("train/*/resume*.pt"))):
                assert run.poll() is None and time.monotonic() < deadline, Path(err.name).read_text()[-4000:]
                time.sleep(0.1)
            os.kill(read_pid(home / "server.pid"), signal.SIGKILL)  # the server dies mid-training
            killed = time.monotonic()
            status = run.wait(timeout=60)
            seconds = time.monotonic() - killed
        finally:
            run.kill()
        stdout, stderr = Path(out.name).read_text(), Path(err.name).read_text()
    # Later runs of this checkout found its own server again (recorded port), not the foreign one.
    assert f"reusing local Prefect server at {moved_server['api_url'].removesuffix('/api')}" in stdout
    assert status == 3 and seconds < 60, (status, seconds, stderr[-4000:])
    message = (f"lost the Prefect API at {moved_server['api_url']} (server stopped?); checkpoints are kept in "
               f"{artifacts.resolve()}; rerun: {shlex.join(['python', 'flows/train_flow.py', *argv])}")
    assert stderr.splitlines()[-1] == message and (stdout + stderr).count("lost the Prefect API") == 1
    assert "ConnectError" not in stdout + stderr and "Traceback" not in stdout + stderr, stderr[-4000:]
    kept = sorted(resume[0].parent.glob("resume*.pt"))  # the newest resume checkpoint sorts last
    assert kept and load_checkpoint(kept[-1]).epoch >= 5


def test_stop_server_stops_it_once(local_server: dict[str, Any]) -> None:
    home = local_server["home"]
    assert stop_server(home=home) is True
    assert not is_healthy(local_server["api_url"])
    assert not (home / "server.pid").exists()
    assert stop_server(home=home) is False


def test_the_server_survives_an_error_it_logs(prefect_server: ServerInfo) -> None:
    """`prefect server start --background` died on its first logged error (its output went to a closed pipe)."""
    import urllib.error
    import urllib.request

    name = f"dup-{os.getpid()}-{time.monotonic_ns()}"
    codes = []
    for _ in range(2):  # the second create of one name answers 500, and the server logs the traceback
        request = urllib.request.Request(f"{prefect_server.api_url}/v2/concurrency_limits/", method="POST",
                                         data=json.dumps({"name": name, "limit": 1}).encode(),
                                         headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                codes.append(response.status)
        except urllib.error.HTTPError as err:
            codes.append(err.code)
    assert codes[0] == 201 and codes[1] >= 400
    time.sleep(1)
    assert is_healthy(prefect_server.api_url, timeout=5), "the server died after logging an error"
    assert (prefect_server.home / "server.log").stat().st_size > 0  # what it said is kept
