"""Tests for flows.server against one real local Prefect server, started once for the module.

The module server is started by a child process that imports Prefect *before* calling
ensure_server and then runs a flow with three tasks, so the fixture alone checks that the server
outlives its starter and that ensure_server works after ``import prefect``. Tests run in file order;
the stop test comes last, and the fixture stops the server at teardown whatever happened.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import prefect.context
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows import server
from flows.server import ServerInfo, ensure_server, is_healthy, server_env, stop_server

REPO_ROOT = Path(__file__).resolve().parents[2]
# Everything through which a developer's own Prefect configuration could leak into a test.
_ISOLATED_KEYS = (
    "PREFECT_API_URL",
    "PREFECT_UI_URL",
    "PREFECT_HOME",
    "PREFECT_PROFILE",
    server.PORT_ENV,
    server.HOME_ENV,
    server._MANAGED_ENV,
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


info = ensure_server(home=Path(sys.argv[1]), port=int(sys.argv[2]), log=lambda line: None)
state = tiny(return_state=True)
print(json.dumps({"started": info.started, "api_url": info.api_url,
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


@pytest.fixture(scope="module")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Start the module's server from a child process that then runs a 3-task flow and exits."""
    home = tmp_path_factory.mktemp("prefect_home")
    port = _free_port()
    env = _isolated(dict(os.environ), home / "profiles.toml")
    try:
        child = subprocess.run(
            [sys.executable, "-c", _CHILD, str(home), str(port)],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        log_tail = server._tail(home / "server.log")
        assert child.returncode == 0, f"{child.stderr[-4000:]}\n--- server.log ---\n{log_tail}"
        report = json.loads(child.stdout.strip().splitlines()[-1])
        yield {"home": home, "port": port, **report}
    finally:
        stop_server(home=home, port=port)


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


def test_stop_server_stops_it_once(local_server: dict[str, Any]) -> None:
    home, port = local_server["home"], local_server["port"]
    assert stop_server(home=home, port=port) is True
    assert not is_healthy(local_server["api_url"])
    assert not (home / "server.pid").exists()
    assert stop_server(home=home, port=port) is False
