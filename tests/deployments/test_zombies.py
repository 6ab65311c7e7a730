"""A cell whose host dies is noticed without a timeout: the server marks its flow run Crashed once its heartbeats
stop (a real server, real heartbeats from a real process killed with SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest

from prefect.automations import Automation
from prefect.client.orchestration import get_client

from flows.cell_flow import CELL_FLOW_NAME
from flows.server import ServerInfo, prefect_settings_context
from flows.zombies import AUTOMATION_NAME, _automation, ensure_zombie_detection

HEARTBEAT = 30  # Prefect's shortest period

SCRIPT = """
import sys, time
from prefect import flow, runtime

@flow(name=sys.argv[1])
def silent_host():
    print(runtime.flow_run.id, flush=True)
    time.sleep(600)

silent_host()
"""


def _start(flow_name: str, script: Path, info: ServerInfo) -> tuple[subprocess.Popen, UUID]:
    env = {**os.environ, "PREFECT_API_URL": info.api_url, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT)}
    process = subprocess.Popen([sys.executable, str(script), flow_name], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    assert process.stdout is not None
    return process, UUID(process.stdout.readline().strip())


def _state(run_id: UUID) -> str:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state.type.value


def test_a_cell_run_whose_heartbeats_stop_is_crashed_and_another_flows_run_is_left_alone(
        prefect_server: ServerInfo, tmp_path: Path) -> None:
    with prefect_settings_context(prefect_server):
        with get_client(sync_client=True) as client:  # whatever earlier tests left
            for automation in client.read_automations_by_name(AUTOMATION_NAME):
                client.delete_automation(automation.id)
            assert ensure_zombie_detection(HEARTBEAT, missed=1) == timedelta(seconds=HEARTBEAT)
        _automation(timedelta(seconds=HEARTBEAT)).create()  # a second one, as a racing dispatcher would leave
        # Prefect's default period (180 s): three missed heartbeats, 9 minutes; the duplicate is gone.
        assert ensure_zombie_detection() == timedelta(seconds=3 * 180)
        with get_client(sync_client=True) as client:
            assert len(client.read_automations_by_name(AUTOMATION_NAME)) == 1
        # The window only grows: a dispatcher with a shorter period must not crash the longer-beating runs.
        assert ensure_zombie_detection(HEARTBEAT, missed=1) == timedelta(seconds=3 * 180)
        # This test's hosts beat every 30 s: one period, set on purpose.
        assert ensure_zombie_detection(HEARTBEAT, missed=1, replace=True) == timedelta(seconds=HEARTBEAT)
        assert Automation.read(name=AUTOMATION_NAME).trigger.within == timedelta(seconds=HEARTBEAT)

        script = tmp_path / "host.py"
        script.write_text(SCRIPT)
        cell, cell_id = _start(CELL_FLOW_NAME, script, prefect_server)
        other, other_id = _start("someone-elses-flow", script, prefect_server)
        try:
            time.sleep(5)  # their first heartbeats (sent as each run starts) reach the server
            for process in (cell, other):
                os.killpg(process.pid, signal.SIGKILL)  # the host dies: no state change, no more heartbeats
                process.wait()
            assert _state(cell_id) == _state(other_id) == "RUNNING"
            deadline = time.monotonic() + HEARTBEAT + 90
            while _state(cell_id) == "RUNNING" and time.monotonic() < deadline:
                time.sleep(2)
            assert _state(cell_id) == "CRASHED"
            assert _state(other_id) == "RUNNING"  # only the cell flow's runs are watched
            with get_client(sync_client=True) as client:
                assert "heartbeat" in client.read_flow_run(cell_id).state.message
        finally:
            for process in (cell, other):
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
            with get_client(sync_client=True) as client:  # leave the session's server as it was
                for automation in client.read_automations_by_name(AUTOMATION_NAME):
                    client.delete_automation(automation.id)


def _running(run_id: UUID, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while _state(run_id) != "RUNNING":
        assert time.monotonic() < deadline, _state(run_id)
        time.sleep(0.2)


def test_without_the_automation_the_dispatch_crashes_a_silent_cell_run_itself(
        prefect_server: ServerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the server refuses the automation, the dispatcher reads its cell's newest event: a live run is left
    alone (and so is one whose events cannot be read), a killed one is set Crashed within the window, not at the
    cell timeout."""
    from flows.dispatch import wait_for_run
    from flows.zombies import crash_if_silent, silence_watch

    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "60")
    assert silence_watch(timedelta(seconds=540)) is None  # the server's automation does it
    assert silence_watch(None) == 3 * 60.0  # three missed heartbeats of the period the cells are given
    script = tmp_path / "host.py"
    script.write_text(SCRIPT)
    with prefect_settings_context(prefect_server):
        cell, cell_id = _start(CELL_FLOW_NAME, script, prefect_server)
        try:
            _running(cell_id)
            with get_client(sync_client=True) as client:
                assert not crash_if_silent(client, client.read_flow_run(cell_id), 20.0)  # it just started
            os.killpg(cell.pid, signal.SIGKILL)  # the host dies: no state change, no more heartbeats
            cell.wait()
            time.sleep(3.5)
            with get_client(sync_client=True) as client, pytest.MonkeyPatch.context() as patch:
                def unreadable(*args, **kwargs):
                    raise ConnectionError("the events API does not answer")

                patch.setattr(type(client), "read_events", unreadable)
                assert not crash_if_silent(client, client.read_flow_run(cell_id), 3.0)  # no guess
            started = time.monotonic()
            with get_client(sync_client=True) as client:
                run = client.read_flow_run(cell_id)
            run = wait_for_run(run, timeout=120, silent_after=3.0, poll_seconds=0.2)
            assert run.state.is_crashed() and time.monotonic() - started < 20, (run.state, time.monotonic() - started)
            assert "no heartbeat for 3 s" in run.state.message and "dispatcher" in run.state.message
        finally:
            if cell.poll() is None:
                os.killpg(cell.pid, signal.SIGKILL)


def test_a_server_that_refuses_the_automation_leaves_the_run_going_with_a_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import flows.zombies

    def refused(within: timedelta, *, replace: bool) -> timedelta:
        raise PermissionError("403: this API key may not create automations")

    monkeypatch.setattr(flows.zombies, "_ensure", refused)
    with caplog.at_level("WARNING", logger="flows.zombies"):
        assert ensure_zombie_detection(60) is None
    assert "403" in caplog.text and "dispatcher watches its own cells" in caplog.text


def test_a_dispatched_cell_beats_as_often_as_the_window_assumes(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.zombies import heartbeat_env

    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)
    assert heartbeat_env() == {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "180"}  # Prefect's default, pinned
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "5")
    assert heartbeat_env() == {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}  # Prefect's floor
