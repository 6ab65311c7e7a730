"""Device slots: how many trainings use a device of this host at once, held by file locks the kernel frees.

A device's slots are ``limit`` lock files ``<slot dir>/<limit name>.<i>.lock``; a training holds one with
``flock(LOCK_EX)`` while it trains. The kernel drops the lock the moment the holding process ends, however it
ends (``kill -9`` included), and no server is involved, so a Prefect server restart changes nothing. Each
acquisition opens its own file description, so threads of one process exclude each other as well. The
slot dir is ``$NODECORE_SLOT_DIR``, else ``<tmp>/nodecore-slots``: a local disk shared by every worker of the
host, all running as one user (the lock files are created with the umask's permissions).

Why not Prefect's leases (measured with prefect 3.9.1, a local SQLite server, 2 busy cores):

* a lease shorter than 60 s is refused (``422: lease_duration ... greater than or equal to 60``), and the
  server's repossessor looks for expired leases every 15 s: a holder killed with ``kill -9`` kept its slot
  for 73 s with the shortest lease (the default lease is 300 s);
* leases live in the server's memory (``server.concurrency.lease_storage`` defaults to
  ``prefect.server.concurrency.lease_storage.memory``) while ``active_slots`` lives in its database: after a
  restart the count stays and no lease is left to expire, so the slot of a holder killed before the restart
  was still held 120 s later, for good; a live holder's next renewal failed (410 Gone) and ``strict=True``
  cancelled it (45 s after the restart with a 60 s lease; 225 s into a training with the default one), and
  its slot then stayed held as well.

Measured here instead: a waiting training got the slot 0.24 s after its holder was killed with ``kill -9``,
and 0.14 s after a restart of the server for a slot whose holder was killed before it; a holder alive
across the restart kept its slot and went on.

The limit itself stays a Prefect global concurrency limit named by :func:`tasks.grid.device_slot`: created
on first use with :func:`tasks.grid.slot_limit` slots, its ``limit`` read at each acquisition (and every
``recheck_seconds`` while waiting), so it is changed in the UI as before. Its ``active_slots`` is set to the
slots held on this host after each acquisition and release (by a thread of its own, so a training never waits for
the display: :func:`wait_published`), so the UI's concurrency page shows the occupancy; a holder killed with
``kill -9`` is corrected there by the next acquisition or release on the host. Only ``limit`` is read: a limit of
0 holds every training back; ``active`` is not looked at.

Slots are not handed out in arrival order: waiters poll every ``poll_seconds`` (a freed slot is taken
within that time, against about 1 s for Prefect's hand-off). A child process forked while a slot is held
inherits the lock and keeps it while it lives (the files are opened close-on-exec, so an ``exec``-ed one
does not).
"""

from __future__ import annotations

import atexit
import contextvars
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from tasks.grid import device_slot, slot_limit

SLOT_DIR_ENV = "NODECORE_SLOT_DIR"
_logger = logging.getLogger(__name__)
_CREATE_LOCK = threading.Lock()


def slot_dir() -> Path:
    """Where this host's slot lock files live: ``$NODECORE_SLOT_DIR``, else ``<tmp>/nodecore-slots``."""
    return Path(os.environ.get(SLOT_DIR_ENV) or Path(tempfile.gettempdir()) / "nodecore-slots")


@dataclass(frozen=True)
class HeldSlot:
    """A slot held by :func:`hold_device`: the limit's ``name``, which of its ``limit`` slots, the wait for it."""

    name: str
    index: int
    limit: int
    queue_seconds: float


def _lock_path(name: str, index: int) -> Path:
    return slot_dir() / f"{name}.{index}.lock"


def _try_lock(path: Path) -> int | None:
    """An open descriptor of ``path`` holding its exclusive lock, or None if another holder has it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _holder(path: Path) -> str:
    """Who holds the slot at ``path``, as its holder wrote it (``?`` while unknown)."""
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} {info['label']}".strip()
    except (OSError, ValueError, KeyError, TypeError):
        return "?"


def _scan(name: str, limit: int) -> tuple[int | None, int, list[str]]:
    """Take the first free slot of ``name``: ``(fd, index, holders of the busy ones)``; ``fd`` None if all are held."""
    holders = []
    for index in range(limit):
        path = _lock_path(name, index)
        fd = _try_lock(path)
        if fd is not None:
            return fd, index, holders
        holders.append(_holder(path))
    return None, -1, holders


def _occupancy(holders: list[str], limit: int) -> str:
    return f"{len(holders)} of {limit} held" + (f": {', '.join(holders)}" if holders else "")


def held_slots(name: str, limit: int) -> int:
    """How many of ``name``'s first ``limit`` slots are held on this host (by this process too).

    Each free slot is locked and unlocked again to find out, so a concurrent acquisition can find it busy
    for that moment (and waits one more poll).
    """
    held = 0
    for index in range(limit):
        fd = _try_lock(_lock_path(name, index))
        if fd is None:
            held += 1
        else:
            os.close(fd)
    return held


def _read_limit(client: Any, name: str, device: str) -> int:
    """The number of slots of the limit ``name`` on the server, creating it with :func:`slot_limit` slots if missing.

    Threads of this process create it one at a time: two creations at once make the server log an
    integrity error, which a server started with ``prefect server start --background`` (its output a closed
    pipe) answered with a 500 and then stopped answering at all (measured).
    """
    with _CREATE_LOCK:
        try:
            return client.read_global_concurrency_limit_by_name(name).limit
        except ObjectNotFound:
            created = GlobalConcurrencyLimitCreate(name=name, limit=slot_limit(device))
            try:
                client.create_global_concurrency_limit(created)
            except ObjectAlreadyExists:  # a training in another process created it first: use theirs
                pass
            return client.read_global_concurrency_limit_by_name(name).limit


_PUBLISHING = threading.Condition()
_queued: dict[str, tuple[int, Any, contextvars.Context]] = {}  # limit name -> what its next publication needs
_unfinished = 0  # publications queued or running
_publisher: threading.Thread | None = None
_EXIT_WAIT_SECONDS = 5.0  # how long an ending process waits for its last publications
_exit_hook = False  # whether wait_published is registered to run at exit


def _publish_soon(name: str, limit: int, log: Any) -> None:
    """Have :func:`_publish` run for ``name`` on this process's publisher thread, so that a training never waits
    for it: the server answers an update of a limit with 503 when another write beat it (SQLite in WAL mode), and
    Prefect's client then sleeps about 2 s before trying again (measured: trainings held back 1.7-2 s in a 3-cell
    run). One publication per limit is queued at a time; it counts the held slots when it runs, so it shows every
    change made before it. It runs in the caller's context (the run's Prefect API and logger)."""
    global _publisher, _unfinished, _exit_hook
    with _PUBLISHING:
        if name not in _queued:
            _unfinished += 1
        _queued[name] = (limit, log, contextvars.copy_context())
        if _publisher is None or not _publisher.is_alive():
            # A daemon, waited for at exit at most _EXIT_WAIT_SECONDS: a server that does not answer never holds a
            # process back for long (the next acquisition or release on the host corrects what it missed).
            _publisher = threading.Thread(target=_publish_queued, name="nodecore-slot-publisher", daemon=True)
            _publisher.start()
            if not _exit_hook:  # once per process, however often the thread is restarted
                atexit.register(wait_published, _EXIT_WAIT_SECONDS)  # a process ending soon after a release shows it
                _exit_hook = True
        _PUBLISHING.notify_all()


def _publish_queued() -> None:
    global _unfinished
    while True:
        with _PUBLISHING:
            while not _queued:
                _PUBLISHING.wait()
            name = next(iter(_queued))
            limit, log, context = _queued.pop(name)
        try:
            context.run(_publish_with_own_client, name, limit, log)
        finally:
            with _PUBLISHING:
                _unfinished -= 1
                _PUBLISHING.notify_all()


def _publish_with_own_client(name: str, limit: int, log: Any) -> None:
    """:func:`_publish` with a client of its own: the copied context may carry the caller's, which its task or flow
    run closes when it ends (a closed client cannot be entered again)."""
    import prefect.context

    prefect.context.SyncClientContext.__var__.set(None)  # in this copy of the context only
    _publish(name, limit, log)


def wait_published(timeout: float = 30.0) -> bool:
    """Wait until the UI shows every acquisition and release made so far in this process; False on ``timeout``."""
    with _PUBLISHING:
        return _PUBLISHING.wait_for(lambda: _unfinished == 0, timeout=timeout)


def _publish(name: str, limit: int, log: Any) -> None:
    """Show the slots held on this host as the limit's active slots in the UI; best effort (the locks decide)."""
    try:
        held = held_slots(name, limit)
        with get_client(sync_client=True) as client:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=min(held, limit)))
    except Exception as err:  # noqa: BLE001 - a display only; training goes on without it
        log.warning("could not show the held slots of %s on the Prefect server: %s", name, err)


def _acquire(client: Any, name: str, device: str, *, log: Any, on_wait: Callable[[str], None] | None,
             poll_seconds: float, remind_seconds: float, recheck_seconds: float) -> tuple[int, int, int, bool]:
    """Wait for a free slot of ``name``, logging the wait: ``(fd holding it, its index, the limit, waited)``."""
    started = time.monotonic()
    limit = _read_limit(client, name, device)
    fd, index, holders = _scan(name, limit)
    if fd is not None:
        return fd, index, limit, False
    message = f"waiting for device slot {name} ({_occupancy(holders, limit)})"
    log.info("%s", message)
    if on_wait is not None:
        on_wait(message)
    reminded = rechecked = started
    while fd is None:
        time.sleep(poll_seconds)
        now = time.monotonic()
        if now - rechecked >= recheck_seconds:
            limit, rechecked = _read_limit(client, name, device), now
        fd, index, holders = _scan(name, limit)
        if fd is None and now - reminded >= remind_seconds:
            log.info("still waiting for device slot %s after %.0f s (%s)", name, now - started,
                     _occupancy(holders, limit))
            reminded = now
    return fd, index, limit, True


@contextmanager
def hold_device(
    device: str,
    *,
    label: str = "",
    log: logging.Logger | logging.LoggerAdapter | None = None,
    on_wait: Callable[[str], None] | None = None,
    poll_seconds: float = 0.2,
    remind_seconds: float = 60.0,
    recheck_seconds: float = 15.0,
) -> Iterator[HeldSlot]:
    """Hold one of this host's slots for ``device`` while the block runs; wait, saying so, until one is free.

    Args:
        device: the device as this process names it (``cuda:0`` under ``CUDA_VISIBLE_DEVICES=3`` is GPU 3).
        label: who holds it (a cell name), shown to trainings that wait for the slot.
        log: where "waiting for device slot ..." and the wait's length go (a run logger); default: this module's.
        on_wait: called once with the waiting message when no slot is free at first (e.g. to show it in the UI).
        poll_seconds: how often a waiting training tries the slots again.
        remind_seconds: how often a waiting training logs that it still waits.
        recheck_seconds: how often a waiting training rereads the limit from the server.

    Returns:
        A context manager yielding the :class:`HeldSlot`; its ``queue_seconds`` is the time spent waiting.
    """
    log = log or _logger
    name = device_slot(device)
    slot_dir().mkdir(parents=True, exist_ok=True)
    started, fd = time.monotonic(), None
    try:
        with get_client(sync_client=True) as client:
            fd, index, limit, waited = _acquire(client, name, device, log=log, on_wait=on_wait,
                                                poll_seconds=poll_seconds, remind_seconds=remind_seconds,
                                                recheck_seconds=recheck_seconds)
        queue_seconds = time.monotonic() - started
        if waited:
            log.info("got device slot %s (%d of %d) after waiting %.1f s", name, index + 1, limit, queue_seconds)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "label": label}).encode(), 0)
        _publish_soon(name, limit, log)
        yield HeldSlot(name=name, index=index, limit=limit, queue_seconds=queue_seconds)
    finally:
        if fd is not None:
            os.ftruncate(fd, 0)
            os.close(fd)  # releases the lock
            _publish_soon(name, limit, log)
