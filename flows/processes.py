"""Processes by pid: is one alive, is it the program we think, stop it, and a lock file between processes.

Used by the server manager (:mod:`flows.server`) and the workers of :mod:`deployments.stack`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path


def read_pid(path: Path) -> int | None:
    """Return the pid stored in ``path``, or None if it is missing or unreadable."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def is_alive(pid: int) -> bool:
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


def is_process(pid: int, *commands: bytes) -> bool:
    """Return whether ``pid`` runs with one of ``commands`` in its command line (``\\0`` between arguments).

    Where ``/proc`` is missing, whether it runs at all (the pid file is trusted). A zombie has an
    empty command line, so it does not count.
    """
    if not is_alive(pid):
        return False
    try:
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except OSError:
        return True
    return any(command in command_line for command in commands)


def terminate(pid: int, *, timeout: float = 5.0, sig: signal.Signals | None = signal.SIGTERM) -> None:
    """Send ``sig`` to ``pid`` (its process group if it leads one), wait ``timeout`` s, then SIGKILL it.

    ``sig=None`` only waits (the signal was sent already) before the SIGKILL.
    """
    for signum in (sig, signal.SIGKILL):
        if signum is not None:
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signum)
                else:
                    os.kill(pid, signum)
        deadline = time.monotonic() + timeout
        while is_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not is_alive(pid):
            return


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
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
