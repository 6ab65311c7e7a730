"""One real local Prefect server for the pipeline tests, started once per session."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import prefect.context
import pytest

from flows import server
from flows.server import ServerInfo, ensure_server, stop_server

# Everything through which a developer's own Prefect configuration could leak into the session.
_USER_KEYS = ("PREFECT_API_URL", "PREFECT_UI_URL", "PREFECT_HOME", "PREFECT_PROFILE", server.MANAGED_ENV)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _drain_prefect_workers() -> None:
    """Send this process's queued logs and events while the server still runs.

    Left queued, they are flushed at interpreter exit against a stopped server, and their retries hold
    the exit of pytest for over a minute ("Error logging to API").
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=30)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    """Start ``prefect server start --background`` under a temporary home on a free port; stop it at the end.

    ``os.environ`` (inherited by the CLI subprocesses, whose own ``ensure_server`` then reuses this server
    through ``NODECORE_PREFECT_HOME``/``NODECORE_PREFECT_PORT``) and Prefect's global settings point at it
    for the session and are restored afterwards.
    """
    home, port = tmp_path_factory.mktemp("prefect_home"), _free_port()
    saved_env, saved_settings = dict(os.environ), prefect.context.GLOBAL_SETTINGS_CONTEXT
    for key in _USER_KEYS:
        os.environ.pop(key, None)
    (home / "profiles.toml").write_text("")
    os.environ.update({
        "PREFECT_PROFILES_PATH": str(home / "profiles.toml"),
        server.HOME_ENV: str(home),
        server.PORT_ENV: str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # This session's own device slots and manifest key: another session on this host shares neither.
        "NODECORE_SLOT_DIR": str(home / "slots"),
        "NODECORE_ARTIFACTS_KEY_FILE": str(home / "artifacts.key"),
    })
    try:
        info = ensure_server(home=home, port=port, timeout=120, log=lambda line: None)
        assert info.started and not info.user_supplied, info
        yield info
    finally:
        _drain_prefect_workers()
        stop_server(home=home)
        os.environ.clear()
        os.environ.update(saved_env)
        prefect.context.GLOBAL_SETTINGS_CONTEXT = saved_settings
