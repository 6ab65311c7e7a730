"""A persistent local Prefect server per checkout, so flow runs stay complete and viewable after a script ends.

Without ``PREFECT_API_URL`` Prefect 3.9 runs each script against a temporary server that stops with
the script, before every task-run update is stored, and without the UI. ``ensure_server`` instead starts
``prefect server start`` once for this checkout, detached, (its SQLite DB under a project-local
``PREFECT_HOME``, default ``<repo>/.prefect``) and reuses that server on later calls. A URL the user
configured is used untouched: ``PREFECT_API_URL`` in the environment, or one Prefect itself resolves
from the active profile, ``prefect.toml``/``pyproject.toml`` or ``.env`` (e.g. after ``prefect cloud login``).

Prefect's own command stops the server; starting it needs our own launch. Measured with prefect 3.9.1:

- ``PREFECT_HOME=<home> prefect server start --background`` starts uvicorn with its stdout and stderr on
  pipes whose reading end closes when the CLI exits. The first error the server then logs kills it: after
  a request that answered 500 (creating a concurrency limit whose name exists), the next request was
  refused and the process was gone. A pipeline whose server dies on its first logged error is not usable,
  so ``_launch`` runs ``prefect server start`` (foreground mode, uvicorn in-process) itself, detached in a
  new session (a SIGINT to the caller's group stopped a server started in it), with its output in
  ``<home>/server.log``, and writes ``<home>/server.pid`` as ``--background`` would.
- ``PREFECT_HOME=<home> prefect server stop`` (2.3 s) finds the server through that file, sends SIGTERM,
  removes the file and returns before the server has exited (gone 1.3 s later), so ``stop_server`` waits.
  It signals whatever process has that pid now: a pid file whose process is not a Prefect server is
  removed first.
- Starting returns before the server is up (8-16 s on a fresh DB here): ``_launch`` waits until it answers.
- Two starts at once under one home race for the port: a lock file serializes the callers, and the later
  ones reuse the first one's server.
- Nothing tells whose server answers on a port (another checkout's ``make run`` wrote into a foreign
  server's DB). A server counts as this checkout's only when ``GET /api/admin/settings`` reports this
  ``PREFECT_HOME`` as its ``home`` (it does, measured). When another server holds the port, a free port
  is chosen and recorded in ``<home>/server.port``, where later runs look first.
- After a first successful request Prefect's client retries a refused connection 5 times with 2**n s
  backoff (``prefect/client/base.py``), about a minute per request, and a run makes several on its way
  out: a run whose server was killed ended after about 6 minutes. ``exit_if_api_lost`` notices at once.

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
import base64
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from flows.processes import is_process, locked, read_pid, terminate

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORT = 4200
DEFAULT_HOME = REPO_ROOT / ".prefect"
HOST = "127.0.0.1"
PORT_ENV = "NODECORE_PREFECT_PORT"
HOME_ENV = "NODECORE_PREFECT_HOME"
# Set beside PREFECT_API_URL by ensure_server: a URL equal to it is ours (e.g. inherited by a child
# process), not the user's, so the child looks for this checkout's server again.
MANAGED_ENV = "NODECORE_PREFECT_MANAGED_URL"
PID_FILE = "server.pid"  # written by _launch (as `start --background` would), read by `prefect server stop`
LOG_FILE = "server.log"
PORT_FILE = "server.port"  # the port this checkout's server was last started on
LOCK_FILE = "server.lock"
# Command lines of a Prefect server: `start --background` runs uvicorn; `start` alone serves in-process.
_SERVER_COMMANDS = (b"prefect.server.api.server:create_app", b"prefect\0server\0start")


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


def resolve_port(port: int | None = None, home: Path | None = None) -> int:
    """Return ``port``, else ``$NODECORE_PREFECT_PORT``, else the port recorded for ``home``, else 4200."""
    return port or int(os.environ.get(PORT_ENV) or 0) or _recorded_port(resolve_home(home)) or DEFAULT_PORT


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
    return _get(f"{api_url.rstrip('/')}/health", timeout) == b"true"


def server_home(api_url: str, timeout: float = 2.0) -> Path | None:
    """Return the ``PREFECT_HOME`` the Prefect server at ``api_url`` reports, or None if none answers so.

    Reads ``GET {api_url}/admin/settings``, sending ``$PREFECT_API_AUTH_STRING`` if set.
    """
    body = _get(f"{api_url.rstrip('/')}/admin/settings", timeout)
    try:
        return Path(json.loads(body)["home"]).expanduser().resolve() if body else None
    except (ValueError, KeyError, TypeError):
        return None


def user_api_url() -> str | None:
    """Return the API URL the user configured (environment first, then Prefect's own sources), if any."""
    env_url = os.environ.get("PREFECT_API_URL")
    if env_url:
        return None if env_url == os.environ.get(MANAGED_ENV) else env_url
    from prefect.settings import Settings  # fresh: reads env, active profile, toml files, .env

    return Settings().api.url or None


def ensure_server(
    *,
    home: Path | None = None,
    port: int | None = None,
    timeout: float = 60.0,
    log: Callable[[str], None] = print,
) -> ServerInfo:
    """Point this process's Prefect at a persistent server, starting this checkout's own if needed.

    A user-configured URL is returned untouched. Otherwise ``start_server`` finds or starts this
    checkout's server, and ``server_env`` is applied to ``os.environ`` (inherited by child processes)
    and, if Prefect is already imported, to its global settings (see the module docstring).

    Args:
        home: ``PREFECT_HOME`` of the local server (its DB and pid file); see ``resolve_home``.
        port: Port to start it on; see ``resolve_port``. A server of another home there is not reused.
        timeout: Seconds to wait for a started server to answer.
        log: Receives one human-readable line saying which server is used.

    Returns:
        Where flow runs go.

    Raises:
        RuntimeError: If a started server exits or does not answer within ``timeout``.
    """
    user_url = user_api_url()
    if user_url is not None:
        ui_url = os.environ.get("PREFECT_UI_URL") or user_url.rstrip("/").removesuffix("/api")
        log(f"using the Prefect API configured by the user: {user_url}")
        return ServerInfo(user_url, ui_url, started=False, home=None, user_supplied=True)
    home = resolve_home(home)
    info = start_server(home=home, port=port, timeout=timeout, log=log)
    _apply_env(server_env(home, _port_of(info.api_url)))
    return info


def find_server(*, home: Path | None = None, port: int | None = None) -> ServerInfo | None:
    """Return this checkout's running server for ``home`` (the one that reports it as its home), or None.

    Looks on the port recorded in ``<home>/server.port``, then on ``resolve_port(port, home)``.
    """
    home = resolve_home(home)
    for candidate in dict.fromkeys(p for p in (_recorded_port(home), resolve_port(port, home)) if p):
        api_url = server_env(home, candidate)["PREFECT_API_URL"]
        if server_home(api_url) == home:
            return _info(home, candidate, started=False)
    return None


def start_server(
    *,
    home: Path | None = None,
    port: int | None = None,
    timeout: float = 60.0,
    log: Callable[[str], None] = print,
) -> ServerInfo:
    """Return this checkout's running server, or start it (``prefect server start``, detached).

    Unlike ``ensure_server`` it ignores a user-configured URL and leaves this process's environment
    alone. When another server (another checkout's, say) holds the port, the next free port is used,
    recorded in ``<home>/server.port`` for later calls, and the log line says so.

    Raises:
        RuntimeError: If the started server exits or does not answer within ``timeout``.
    """
    home = resolve_home(home)
    home.mkdir(parents=True, exist_ok=True)
    with locked(home / LOCK_FILE):  # concurrent scripts: one starts, the others reuse
        if (running := find_server(home=home, port=port)) is not None:
            log(f"reusing local Prefect server at {running.ui_url}")
            return running
        wanted = resolve_port(port, home)
        chosen = wanted if _port_is_free(wanted) else _free_port_after(wanted)
        for attempt in range(3):
            try:
                _launch(home, chosen, timeout)
                break
            except PortTakenError:  # taken between our check and the server's bind (e.g. by a client socket)
                if attempt == 2:
                    raise
                chosen = _free_port_after(chosen)
        (home / PORT_FILE).write_text(f"{chosen}\n")
    info = _info(home, chosen, started=True)
    moved = "" if chosen == wanted else f"port {wanted} is taken by {_holder(wanted)}, so "
    stop_hint = "" if home == resolve_home() else f" --home {home}"
    log(
        f"{moved}started a local Prefect server at {info.ui_url} (PREFECT_HOME={home}); open the UI "
        f"there; stop it with `python flows/server.py stop{stop_hint}`"
    )
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


def stop_server(*, home: Path | None = None, timeout: float = 15.0) -> bool:
    """Stop this checkout's server for ``home`` with ``prefect server stop``, and wait until it is gone.

    Args:
        home: As for ``ensure_server``; the server is found through ``<home>/server.pid``.
        timeout: Seconds to wait for it to exit before sending SIGKILL.

    Returns:
        True if a running server was stopped, False if none was running.
    """
    home = resolve_home(home)
    pid = read_pid(home / PID_FILE)
    if pid is None or not is_process(pid, *_SERVER_COMMANDS):
        (home / PID_FILE).unlink(missing_ok=True)  # stale: `prefect server stop` would signal its pid
        return False
    subprocess.run([sys.executable, "-m", "prefect", "server", "stop"], env={**os.environ, "PREFECT_HOME": str(home)},
                   cwd=home, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    terminate(pid, timeout=timeout, sig=None)  # `stop` sent SIGTERM and returns before the server exits
    (home / PID_FILE).unlink(missing_ok=True)
    return True


@contextlib.contextmanager
def exit_if_api_lost(info: ServerInfo, message: str, *, grace: float = 3.0, status: int = 3) -> Iterator[None]:
    """While active, end the process with ``message`` on stderr as soon as the Prefect API is lost.

    The API counts as lost when the body raises an ``httpx.TransportError`` (Prefect's client gave up)
    or, for this checkout's server, when its port refuses connections for ``grace`` seconds (a slow
    answer does not count). A user's server is left to Prefect's client retries, which ride out a
    restart. The process then exits with ``status`` at once (``os._exit``): Prefect's exit handlers
    would retry the dead API for another minute or more (see the module docstring).
    """
    import httpx

    done = threading.Event()

    def watch() -> None:
        address, refused_since = (HOST, _port_of(info.api_url)), None
        while not done.wait(0.5):
            try:
                socket.create_connection(address, timeout=2).close()
                refused_since = None
            except ConnectionRefusedError:  # nothing listens there any more
                refused_since = refused_since or time.monotonic()
                if time.monotonic() - refused_since >= grace:
                    _exit_now(message, status)
            except OSError:  # a timeout: busy, not gone
                refused_since = None

    if not info.user_supplied:
        threading.Thread(target=watch, name="nodecore-api-watch", daemon=True).start()
    try:
        yield
    except httpx.TransportError:
        _exit_now(message, status)
    finally:
        done.set()


def _exit_now(message: str, status: int) -> NoReturn:
    """Print ``message`` to stderr and end the process with ``status`` without running exit handlers."""
    sys.stdout.flush()
    print(message, file=sys.stderr, flush=True)
    os._exit(status)


class PortTakenError(RuntimeError):
    """The server could not bind its port: something took it after the port was found free."""


def _launch(home: Path, port: int, timeout: float) -> None:
    """Start ``prefect server start`` for ``home`` on ``port``, detached, logging to ``server.log``; wait until it answers.

    Not ``--background``: that mode leaves the server writing to pipes nobody reads (see the module docstring),
    and the first error it logs kills it.
    """
    pid = read_pid(home / PID_FILE)
    if pid is not None and not is_process(pid, *_SERVER_COMMANDS):
        (home / PID_FILE).unlink()  # left by a killed server
    env = server_env(home, port)
    log_start = (home / LOG_FILE).stat().st_size if (home / LOG_FILE).exists() else 0
    with open(home / LOG_FILE, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)],
            env={**os.environ, **env}, cwd=home, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # own session: no SIGINT/SIGHUP from our terminal; outlives this process
        )
    (home / PID_FILE).write_text(f"{process.pid}\n")  # where `prefect server stop` looks for it
    deadline = time.monotonic() + timeout
    while server_home(env["PREFECT_API_URL"]) != home:
        if process.poll() is not None or time.monotonic() > deadline:
            stop_server(home=home)
            reason = "exited" if process.poll() is not None else f"did not answer within {timeout:g} s"
            error = PortTakenError if _said_since(home / LOG_FILE, log_start, "address already in use") else RuntimeError
            raise error(f"the Prefect server on port {port} {reason}; its log ({home / LOG_FILE}) ends:\n"
                        f"{_tail(home / LOG_FILE)}")
        time.sleep(0.25)


def _said_since(path: Path, offset: int, text: str) -> bool:
    """Whether the log at ``path`` says ``text`` after byte ``offset``."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return text.encode() in handle.read()
    except OSError:
        return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _info(home: Path, port: int, *, started: bool) -> ServerInfo:
    env = server_env(home, port)
    return ServerInfo(env["PREFECT_API_URL"], env["PREFECT_UI_URL"], started=started, home=home,
                      user_supplied=False)


def _port_of(api_url: str) -> int:
    return urllib.parse.urlsplit(api_url).port or DEFAULT_PORT


def _recorded_port(home: Path) -> int | None:
    """Return the port recorded in ``<home>/server.port``, or None."""
    return _read_int(home / PORT_FILE)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _port_is_free(port: int) -> bool:
    """Return whether ``127.0.0.1:port`` can be bound, the way ``prefect server start`` checks it."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port_after(port: int) -> int:
    """Return the first free port above ``port`` (within 100), else one the OS picks."""
    for candidate in range(port + 1, min(port + 101, 65536)):
        if _port_is_free(candidate):
            return candidate
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _holder(port: int) -> str:
    """Describe who answers on ``port``, for a log line."""
    api_url = f"http://{HOST}:{port}/api"
    if (other := server_home(api_url)) is not None:
        return f"another Prefect server (PREFECT_HOME={other})"
    return "a server that does not report its PREFECT_HOME" if is_healthy(api_url) else "another process"


def _get(url: str, timeout: float) -> bytes | None:
    """Return the body of ``GET url`` if it answers HTTP 200, else None (proxies bypassed)."""
    request = urllib.request.Request(url)
    if auth := os.environ.get("PREFECT_API_AUTH_STRING"):
        request.add_header("Authorization", f"Basic {base64.b64encode(auth.encode()).decode()}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.read().strip() if response.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None


def _apply_env(env: dict[str, str]) -> None:
    """Set ``env`` in ``os.environ`` and, if Prefect is imported, refresh its global settings."""
    os.environ.update(env)
    os.environ[MANAGED_ENV] = env["PREFECT_API_URL"]
    if "prefect.context" in sys.modules:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


def server_status(*, home: Path | None = None, port: int | None = None) -> tuple[bool, str]:
    """Return whether this checkout's server runs, and one line saying so (a foreign server is named as such)."""
    home = resolve_home(home)
    if (own := find_server(home=home, port=port)) is not None:
        pid = read_pid(home / PID_FILE)
        return True, f"healthy: {own.api_url} ({f'pid {pid}, ' if pid else ''}PREFECT_HOME={home})"
    api_url = server_env(home, resolve_port(port, home))["PREFECT_API_URL"]
    if is_healthy(api_url):
        return False, (f"not running: {api_url} answers, but it is {_holder(_port_of(api_url))}, "
                       f"not this checkout's (PREFECT_HOME={home})")
    return False, f"not running: {api_url} (PREFECT_HOME={home})"


def main(argv: list[str] | None = None) -> int:
    """Run the ``start|stop|status`` command line; return the exit status."""
    parser = argparse.ArgumentParser(description="Manage this checkout's local Prefect server.")
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--port", type=int, default=None,
                        help=f"default ${PORT_ENV}, else the port recorded in the home, else {DEFAULT_PORT}")
    parser.add_argument("--home", type=Path, default=None, help=f"default ${HOME_ENV} or {DEFAULT_HOME}")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for start-up")
    args = parser.parse_args(argv)
    if args.command == "start":  # starts the local server even if the user configured another one
        info = start_server(home=args.home, port=args.port, timeout=args.timeout, log=print)
        print(f"export PREFECT_API_URL={info.api_url}")
        return 0
    if args.command == "stop":
        home = resolve_home(args.home)
        print("stopped the local Prefect server" if stop_server(home=home) else f"no local Prefect server for {home}")
        return 0
    running, line = server_status(home=args.home, port=args.port)
    print(line)
    return 0 if running else 1


if __name__ == "__main__":
    sys.exit(main())
