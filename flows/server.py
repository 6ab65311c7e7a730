"""A persistent local Prefect server, so flow runs stay complete and viewable after a script ends.

Without ``PREFECT_API_URL`` Prefect 3.9 runs each script against a temporary server that stops with
the script, before every task-run update is stored, and without the UI. ``ensure_server`` instead
starts ``prefect server start`` once, detached (it outlives the Python process that started it, keeps
its SQLite DB under a project-local ``PREFECT_HOME``, default ``<repo>/.prefect``) and reuses it on
later calls. A URL the user configured is used untouched: ``PREFECT_API_URL`` in the environment, or
one Prefect itself resolves from the active profile, ``prefect.toml``/``pyproject.toml`` or ``.env``
(e.g. after ``prefect cloud login``).

How Prefect 3.9.1 reads settings (measured): ``import prefect`` imports ``prefect.context``, which
builds the process-global settings context from the environment and the active profile at import
time. Changing ``os.environ`` afterwards is invisible to ``prefect.settings.get_current_settings()``
and to flows, which then still start the temporary server. ``ensure_server`` therefore, when Prefect
is already imported, also calls ``prefect.context.refresh_global_settings_context()`` (what
``import prefect`` itself calls after plugins have set environment variables); a flow called after
that was recorded on the local server. So ensure_server may be called before or after
``import prefect``. Two limits: an active ``temporary_settings``/``prefect_test_harness`` context
still takes precedence over the global one, and ``refresh_global_settings_context`` is not a
documented public API. Where either matters, wrap the flow call in ``prefect_settings_context(info)``.

Usage::

    info = ensure_server()          # before the first flow call
    my_flow()

    python flows/server.py start|stop|status [--port PORT] [--home DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORT = 4200
DEFAULT_HOME = REPO_ROOT / ".prefect"
HOST = "127.0.0.1"
PORT_ENV = "NODECORE_PREFECT_PORT"
HOME_ENV = "NODECORE_PREFECT_HOME"
# Set beside PREFECT_API_URL by ensure_server: a URL equal to it is ours (e.g. inherited by a child
# process), not the user's, so the child checks health and restarts the server if needed.
_MANAGED_ENV = "NODECORE_PREFECT_MANAGED_URL"
_PID_FILE = "server.pid"
_LOG_FILE = "server.log"
_LOCK_FILE = "server.lock"


@dataclass(frozen=True)
class ServerInfo:
    """Where flow runs go.

    Attributes:
        api_url: The Prefect API, e.g. ``http://127.0.0.1:4200/api``.
        ui_url: The UI to open in a browser.
        started: Whether this call started the server (False when reused or user-supplied).
        home: The ``PREFECT_HOME`` of the local server; None for a user-supplied URL.
        user_supplied: Whether the URL came from the user's own configuration.
    """

    api_url: str
    ui_url: str
    started: bool
    home: Path | None
    user_supplied: bool


def resolve_home(home: Path | None = None) -> Path:
    """Return ``home``, else ``$NODECORE_PREFECT_HOME``, else ``<repo>/.prefect``, made absolute."""
    chosen = home if home is not None else Path(os.environ.get(HOME_ENV) or DEFAULT_HOME)
    return Path(chosen).expanduser().resolve()


def resolve_port(port: int | None = None) -> int:
    """Return ``port``, else ``$NODECORE_PREFECT_PORT``, else ``DEFAULT_PORT``."""
    return port or int(os.environ.get(PORT_ENV) or DEFAULT_PORT)


def server_env(home: Path, port: int) -> dict[str, str]:
    """Return the environment variables that point Prefect at the local server."""
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://{HOST}:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_URL": f"http://{HOST}:{port}",
    }


def is_healthy(api_url: str, timeout: float = 1.0) -> bool:
    """Return whether ``GET {api_url}/health`` answers HTTP 200 with body ``true`` (proxies bypassed)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{api_url.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200 and response.read().strip() == b"true"
    except (OSError, ValueError, http.client.HTTPException):
        return False


def ensure_server(
    *,
    home: Path | None = None,
    port: int | None = None,
    timeout: float = 60.0,
    log: Callable[[str], None] = print,
) -> ServerInfo:
    """Point this process's Prefect at a persistent server, starting a local one if needed.

    A user-configured URL is returned untouched. Otherwise a healthy server on
    ``127.0.0.1:port`` is reused, or ``prefect server start`` is launched detached; in both
    cases ``server_env`` is applied to ``os.environ`` (inherited by child processes) and, if
    Prefect is already imported, to its global settings (see the module docstring).

    Args:
        home: ``PREFECT_HOME`` of the local server (its DB, log and pid file); see ``resolve_home``.
        port: Local port; see ``resolve_port``.
        timeout: Seconds to wait for a started server to become healthy.
        log: Receives one human-readable line saying which server is used.

    Returns:
        Where flow runs go.

    Raises:
        RuntimeError: If a started server exits or is not healthy within ``timeout``.
    """
    user_url = _user_api_url()
    if user_url is not None:
        ui_url = os.environ.get("PREFECT_UI_URL") or user_url.rstrip("/").removesuffix("/api")
        log(f"using the Prefect API configured by the user: {user_url}")
        return ServerInfo(user_url, ui_url, started=False, home=None, user_supplied=True)
    home, port = resolve_home(home), resolve_port(port)
    info = _ensure_local(home=home, port=port, timeout=timeout, log=log)
    _apply_env(server_env(home, port))
    return info


def prefect_settings_context(info: ServerInfo) -> contextlib.AbstractContextManager[object]:
    """Return a context manager that points Prefect's settings at ``info`` while it is active.

    For callers that cannot rely on ``ensure_server`` refreshing Prefect's global settings (e.g.
    inside ``prefect_test_harness``). A user-supplied URL gets a no-op context.
    """
    if info.user_supplied:
        return contextlib.nullcontext()
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, PREFECT_UI_URL, temporary_settings

    updates = {PREFECT_API_URL: info.api_url, PREFECT_UI_URL: info.ui_url}
    if info.home is not None:
        updates[PREFECT_HOME] = str(info.home)
    return temporary_settings(updates=updates)


def stop_server(*, home: Path | None = None, port: int | None = None, timeout: float = 15.0) -> bool:
    """Stop the server that ``ensure_server`` started for ``home``.

    Args:
        home: As for ``ensure_server``; the server is found through ``<home>/server.pid``.
        port: If given, also wait until nothing healthy answers on it any more.
        timeout: Seconds to wait after SIGTERM before sending SIGKILL.

    Returns:
        True if a running server was stopped, False if none was running.
    """
    pid_path = resolve_home(home) / _PID_FILE
    pid = _read_pid(pid_path)
    if pid is None or not _is_server_process(pid):
        pid_path.unlink(missing_ok=True)
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        _signal_group(pid, sig)
        deadline = time.monotonic() + timeout
        while _is_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not _is_alive(pid):
            break
    pid_path.unlink(missing_ok=True)
    if port is not None:
        deadline = time.monotonic() + timeout
        while is_healthy(f"http://{HOST}:{port}/api") and time.monotonic() < deadline:
            time.sleep(0.1)
    return True


def _user_api_url() -> str | None:
    """Return the API URL the user configured (environment first, then Prefect's own sources)."""
    env_url = os.environ.get("PREFECT_API_URL")
    if env_url:
        return None if env_url == os.environ.get(_MANAGED_ENV) else env_url
    from prefect.settings import Settings  # fresh: reads env, active profile, toml files, .env

    return Settings().api.url or None


def _ensure_local(*, home: Path, port: int, timeout: float, log: Callable[[str], None]) -> ServerInfo:
    """Reuse the healthy server on ``port`` or start one for ``home``; do not touch this process's env."""
    env = server_env(home, port)
    api_url, ui_url = env["PREFECT_API_URL"], env["PREFECT_UI_URL"]
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home / _LOCK_FILE):  # concurrent scripts: one starts, the others reuse
        started = False
        if not is_healthy(api_url):
            started = _start(home=home, port=port, env=env, timeout=timeout)
    if started:
        stop_hint = "" if home == resolve_home() else f" --home {home}"
        log(
            f"started a local Prefect server at {ui_url} (PREFECT_HOME={home}); open the UI there; "
            f"stop it with `python flows/server.py stop{stop_hint}`"
        )
    else:
        log(f"reusing local Prefect server at {ui_url}")
    return ServerInfo(api_url, ui_url, started=started, home=home, user_supplied=False)


def _start(*, home: Path, port: int, env: dict[str, str], timeout: float) -> bool:
    """Launch a detached ``prefect server start`` and wait until it is healthy.

    Returns:
        True, or False if our process lost a race for the port to a server that is now healthy.
    """
    log_path, pid_path = home / _LOG_FILE, home / _PID_FILE
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            cwd=home,
            start_new_session=True,  # own process group: no SIGINT/SIGHUP from our terminal
        )
    pid_path.write_text(f"{process.pid}\n")
    deadline = time.monotonic() + timeout
    while not is_healthy(env["PREFECT_API_URL"]):
        if process.poll() is not None or time.monotonic() > deadline:
            reason = (
                f"exited with code {process.returncode} (port in use? choose another with "
                f"--port or ${PORT_ENV})"
                if process.poll() is not None
                else f"was not healthy after {timeout:g} s"
            )
            stop_server(home=home)
            raise RuntimeError(
                f"the Prefect server on port {port} {reason}; end of {log_path}:\n{_tail(log_path)}"
            )
        time.sleep(0.25)
    if process.poll() is not None:  # someone else's server answers on the port
        pid_path.unlink(missing_ok=True)
        return False
    return True


def _apply_env(env: dict[str, str]) -> None:
    """Set ``env`` in ``os.environ`` and, if Prefect is imported, refresh its global settings."""
    os.environ.update(env)
    os.environ[_MANAGED_ENV] = env["PREFECT_API_URL"]
    if "prefect.context" in sys.modules:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (no-op where ``fcntl`` is unavailable)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _read_pid(path: Path) -> int | None:
    """Return the pid stored in ``path``, or None if it is missing or unreadable."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _is_alive(pid: int) -> bool:
    """Return whether ``pid`` runs (reaping it first if it is our own exited child)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_server_process(pid: int) -> bool:
    """Return whether ``pid`` is alive and (where ``/proc`` exists) a ``prefect server`` process."""
    if not _is_alive(pid):
        return False
    try:
        return b"prefect\0server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc: trust the pid file
    except OSError:
        return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to ``pid``'s process group if ``pid`` leads it, else to ``pid`` alone."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _tail(path: Path, lines: int = 30) -> str:
    """Return the last ``lines`` lines of ``path`` (empty if unreadable)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    """Run the ``start|stop|status`` command line; return the exit status."""
    parser = argparse.ArgumentParser(description="Manage the project's local Prefect server.")
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--port", type=int, default=None, help=f"default ${PORT_ENV} or {DEFAULT_PORT}")
    parser.add_argument("--home", type=Path, default=None, help=f"default ${HOME_ENV} or {DEFAULT_HOME}")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for start-up")
    args = parser.parse_args(argv)
    home, port = resolve_home(args.home), resolve_port(args.port)
    if args.command == "start":  # starts the local server even if the user configured another one
        info = _ensure_local(home=home, port=port, timeout=args.timeout, log=print)
        print(f"export PREFECT_API_URL={info.api_url}")
        return 0
    if args.command == "stop":
        stopped = stop_server(home=home, port=port)
        print("stopped the local Prefect server" if stopped else f"no local Prefect server for {home}")
        return 0
    api_url = server_env(home, port)["PREFECT_API_URL"]
    pid = _read_pid(home / _PID_FILE)
    healthy = is_healthy(api_url)
    owner = f" (pid {pid}, PREFECT_HOME={home})" if pid is not None and _is_server_process(pid) else ""
    print(f"{'healthy' if healthy else 'not running'}: {api_url}{owner}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
