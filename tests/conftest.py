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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 API on loopback for the session (moto's server mode), its endpoint URL yielded.

    fsspec reads ``FSSPEC_S3_*`` variables only when it is imported, so this process is pointed at the
    server through ``fsspec.config.conf``; subprocesses get ``FSSPEC_S3_ENDPOINT_URL`` and test credentials
    through ``os.environ``. Both are restored afterwards.
    """
    import subprocess
    import sys
    import time
    import urllib.request

    import fsspec.config

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = (tmp_path_factory.mktemp("s3") / "moto.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=log, stderr=subprocess.STDOUT)
    saved_env, saved_conf = dict(os.environ), dict(fsspec.config.conf)
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "FSSPEC_S3_ENDPOINT_URL": endpoint})
    fsspec.config.conf["s3"] = {"endpoint_url": endpoint}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the S3 server did not start (exit {process.poll()}); see {log.name}")
                time.sleep(0.2)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        os.environ.clear()
        os.environ.update(saved_env)
        fsspec.config.conf.clear()
        fsspec.config.conf.update(saved_conf)
