"""Run a stage's compute in a warm worker process, so that stages in threads of one flow process use every core.

Renders (matplotlib) and trainings of small models are Python-bound: in threads of one process they take turns
on the GIL, so a host's second core sits idle while they run. Inside :func:`worker_processes` (the ``threads``
executor opens it around a run's pending cells), :func:`call` hands such a function to a pool of worker
processes instead; everywhere else (no pool open: a worker process of the ``processes`` or ``dask`` executor, a
dispatched cell, a test calling a stage) it calls the function in place.

The pool is the standard library's ``ProcessPoolExecutor``: it runs compute only, never a Prefect task, so the
task run, its retries, cache and manifest stay in the flow's thread. Its processes are forked from Python's
*forkserver* (started once per flow process, with torch, matplotlib and nodecore imported once in it), so a
worker is ready in milliseconds and is never forked from the flow process's threads. What crosses to a worker is
a module-level function and plain arguments (paths, numbers, small configs), pickled by the standard library:
nothing read from disk or the store is unpickled.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any, TypeVar

from tasks.grid import usable_cores

_T = TypeVar("_T")
# Imported once in the forkserver, so that every worker forked from it starts with them (torch's optimizers import
# torch._dynamo when first built: 1.1 s each time otherwise).
PRELOAD = ("__main__", "torch", "torch._dynamo", "torch.optim", "matplotlib", "matplotlib.figure", "nodecore", "nodecore.plotting",
           "tasks.render", "tasks.train", "tasks.train_worker")

_LOCK = threading.Lock()
_pool: Future[ProcessPoolExecutor] | None = None  # set while a block of worker_processes is open
_workers = 0
_log = logging.getLogger(__name__)


def stage_processes(requested: int | None, cells: int) -> int:
    """How many worker processes a run of ``cells`` pending cells opens: ``requested`` where given (0: none),
    else one per usable core (at most one per cell) plus one, so that a render need not wait for a training."""
    if requested is not None:
        return requested
    return min(usable_cores(), cells) + 1


def _warm_up() -> None:
    """Each worker's initializer: one torch intra-op thread (a worker is one of the host's cores), and an exit
    when the flow process is gone (its forkserver, this worker's parent, then exits too): a worker never outlives
    a killed run."""
    import torch

    torch.set_num_threads(1)
    parent = os.getppid()

    def exit_when_orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=exit_when_orphaned, name="nodecore-orphan-watch", daemon=True).start()


def _ready() -> None:
    """A no-op submitted once per worker, so that the pool forks them all before the first real call."""


def _new_pool(workers: int) -> ProcessPoolExecutor:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_warm_up)
    for _ in range(workers):
        pool.submit(_ready)  # blocks until the forkserver has imported PRELOAD (the first time: seconds)
    return pool


def _started(workers: int) -> Future[ProcessPoolExecutor]:
    """A pool of ``workers`` processes, started in a background thread: the caller goes on meanwhile."""
    started: Future[ProcessPoolExecutor] = Future()

    def start() -> None:
        try:
            started.set_result(_new_pool(workers))
        except BaseException as err:  # handed to the first call, which raises it
            started.set_exception(err)

    threading.Thread(target=start, name="nodecore-stage-workers", daemon=True).start()
    return started


@contextmanager
def worker_processes(workers: int) -> Iterator[None]:
    """Let :func:`call` run functions in ``workers`` worker processes (0: in place) until the block ends.

    The workers start in the background (the block goes on at once; the first call waits for them) and are shut
    down, after their running calls, when the block ends. Blocks do not nest: an inner block keeps the outer pool.
    """
    global _pool, _workers
    with _LOCK:
        opened = workers > 0 and _pool is None
        if opened:
            _pool, _workers = _started(workers), workers
    try:
        yield
    finally:
        if opened:
            with _LOCK:
                started, _pool = _pool, None
            if started is not None and started.exception() is None:
                started.result().shutdown(wait=True, cancel_futures=True)


def active_workers() -> int:
    """How many worker processes :func:`call` uses now (0: it calls in place)."""
    return _workers if _pool is not None else 0


def submit(fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T] | None:
    """Start ``fn(*args, **kwargs)`` in a worker process and return its future; None where no pool is open.

    The future raises :class:`~concurrent.futures.process.BrokenProcessPool` if its worker died; the pool is then
    replaced for later calls (see :func:`call`).
    """
    with _LOCK:
        started = _pool
    if started is None:
        return None
    pool = started.result()
    try:
        future: Future[_T] = pool.submit(fn, *args, **kwargs)
    except BrokenProcessPool:
        _replace(started)
        raise
    future.add_done_callback(lambda done: _replace(started) if not done.cancelled()
                             and isinstance(done.exception(), BrokenProcessPool) else None)
    return future


def call(fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
    """``fn(*args, **kwargs)`` in a worker process while :func:`worker_processes` is open, else in place.

    ``fn`` must be a module-level function and its arguments and result picklable. Its exception is re-raised
    here. A worker that dies (killed, out of memory) breaks the pool; the pool is then replaced for later calls
    and this call raises :class:`~concurrent.futures.process.BrokenProcessPool`, which the stage's retries treat
    as transient.
    """
    future = submit(fn, *args, **kwargs)
    return fn(*args, **kwargs) if future is None else future.result()


def _replace(broken: Future[ProcessPoolExecutor]) -> None:
    """Replace the pool ``broken`` by a new one, unless that happened already (or its block has ended)."""
    global _pool
    with _LOCK:
        if _pool is not broken:
            return
        _log.warning("a stage worker process died; starting %d new ones", _workers)
        _pool = _started(_workers)
    broken.result().shutdown(wait=False, cancel_futures=True)
