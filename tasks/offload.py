"""Run a stage's compute in a warm worker process, so that stages in threads of one flow process use every core.

Renders (matplotlib) and trainings of small models are Python-bound: in threads of one process they take turns
on the GIL, so a host's second core sits idle while they run. Inside :func:`worker_processes` (the ``threads``
executor opens it around a run's pending cells), :func:`call` hands such a function to a pool of worker
processes instead; everywhere else (no pool open: a worker process of the ``processes`` or ``dask`` executor, a
dispatched cell, a test calling a stage) it calls the function in place.

Each worker is a single-process ``ProcessPoolExecutor`` of the standard library, fed from one queue, so a worker
that dies fails its own call only. The pool runs compute only, never a Prefect task, so the task run, its retries,
cache and manifest stay in the flow's thread. Its processes are forked from Python's *forkserver* (started once per
flow process, with torch, matplotlib and nodecore imported once in it), so a worker is ready in milliseconds and is
never forked from the flow process's threads. What crosses to a worker is a module-level function and plain
arguments (paths, numbers, small configs), pickled by the standard library: nothing read from disk or the store
is unpickled.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any, TypeVar

from tasks.grid import usable_cores

_T = TypeVar("_T")
# Imported once in the forkserver, so that every worker forked from it starts with them: what a training and a render
# import (torch's optimizers import torch._dynamo when first built: 1.1 s each time otherwise; nodecore's modules and
# pyarrow's dataset reader 0.8 s more), not Prefect, which no worker needs. tasks.worker_preload comes first: the
# workers then skip re-running the flow's main script (see there). No "__main__": Python 3.11's forkserver never
# receives its path, and it would import Prefect.
PRELOAD = ("tasks.worker_preload", "torch", "torch._dynamo", "torch.optim", "matplotlib", "matplotlib.figure",
           "matplotlib.backends.backend_agg", "PIL.Image", "pyarrow.dataset", "nodecore", "nodecore.checkpoints",
           "nodecore.dataset_io", "nodecore.training", "nodecore.trajectory_io", "nodecore.plotting",
           "tasks.train_worker", "tasks.render_worker")
_WATCH_SECONDS = 1.0

_LOCK = threading.Lock()
# Set while a block of worker_processes is open; its result is None where the pool could not start.
_pool: Future[_Pool | None] | None = None
_workers = 0
_running = 0  # calls submitted and not yet done, in any pool
_blocks = 0  # open blocks of worker_processes (threads of one process may run several flows)
_log = logging.getLogger(__name__)


def stage_processes(requested: int | None, cells: int) -> int:
    """How many worker processes a run of ``cells`` pending cells opens: ``requested`` where given (0: none),
    else one per usable core (at most one per cell) plus one, so that a render need not wait for a training."""
    if requested is not None:
        return requested
    return min(usable_cores(), cells) + 1


def _warm_up(flow_pid: int) -> None:
    """Each worker's initializer: one torch intra-op thread (a worker is one of the host's cores), and an exit
    when the flow process ``flow_pid`` is gone: a worker never outlives a killed run.

    The flow process is watched by its pid: a worker's parent is the forkserver, which exits only after all its
    children have (each holds its "alive" pipe), so the parent's death would never be seen.
    """
    import torch

    torch.set_num_threads(1)

    def exit_when_the_flow_is_gone() -> None:
        while True:
            time.sleep(_WATCH_SECONDS)
            try:
                os.kill(flow_pid, 0)
            except (ProcessLookupError, PermissionError):  # gone (or its pid reused by another user's process)
                os._exit(1)

    threading.Thread(target=exit_when_the_flow_is_gone, name="nodecore-flow-watch", daemon=True).start()


def _ready() -> None:
    """A no-op submitted once per worker, so that the pool forks them all before the first real call."""


def _new_worker() -> ProcessPoolExecutor:
    """One worker process, warm: a single-process executor forked from the forkserver, its process started."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    worker = ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=_warm_up, initargs=(os.getpid(),))
    try:
        worker.submit(_ready).result()  # the first time: seconds, while the forkserver imports PRELOAD
    except BaseException:
        worker.shutdown(wait=False, cancel_futures=True)
        raise
    return worker


class _Call:
    """A call waiting for a worker: the function, its arguments and the future the caller holds."""

    __slots__ = ("future", "fn", "args", "kwargs")

    def __init__(self, future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]):
        self.future, self.fn, self.args, self.kwargs = future, fn, args, kwargs


class PoolClosed(RuntimeError):
    """The pool has shut down (its block ended): the call was not started."""


class _Pool:
    """``workers`` worker processes fed from one queue, each by its own thread. Each process is a single-process
    ``ProcessPoolExecutor``, so a worker that dies (killed, out of memory) fails its own call only: its thread
    starts a new process for its next call, while the other workers' calls go on."""

    def __init__(self, workers: int) -> None:
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._workers: list[ProcessPoolExecutor | None] = []
        try:
            for _ in range(workers):
                self._workers.append(_new_worker())
        except BaseException:
            for worker in self._workers:
                worker.shutdown(wait=False, cancel_futures=True)
            raise
        self._threads = [threading.Thread(target=self._feed, args=(slot,), name=f"nodecore-stage-worker-{slot}",
                                          daemon=True) for slot in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        """Queue ``fn(*args, **kwargs)`` for the next free worker.

        Raises:
            PoolClosed: the pool has shut down.
        """
        future: Future[_T] = Future()
        with self._lock:
            if self._closed:
                raise PoolClosed("the stage worker processes have shut down")
            self._queue.put(_Call(future, fn, args, kwargs))
        return future

    def _feed(self, slot: int) -> None:
        """One worker's thread: run the queued calls in that worker until the pool shuts down; every call taken
        ends with its result or its error (never left running)."""
        while (call := self._queue.get()) is not None:
            if not call.future.set_running_or_notify_cancel():
                continue
            try:
                result = self._run(slot, call)
            except BaseException as err:  # noqa: BLE001  (the call's own error, or its worker's, for the caller)
                call.future.set_exception(err)
            else:
                call.future.set_result(result)

    def _run(self, slot: int, call: _Call) -> Any:
        worker = self._workers[slot]
        if worker is None:  # the last one died: a new one, forked in milliseconds
            if self._closed:
                raise PoolClosed("the stage worker processes have shut down")
            worker = self._workers[slot] = _new_worker()  # its own failure fails this call; the next one retries
        try:
            return worker.submit(call.fn, *call.args, **call.kwargs).result()
        except BrokenProcessPool:
            _log.warning("a stage worker process died; a new one takes its next call")
            self._workers[slot] = None
            worker.shutdown(wait=False)
            raise

    def shutdown(self, wait: bool) -> None:
        """End the workers: after the calls submitted (``wait``), or at once, the waiting calls cancelled and the
        running ones left to end on their own (a worker exits when the flow process is gone). Later calls to
        :meth:`submit` raise :class:`PoolClosed`."""
        with self._lock:  # no call is queued after this
            self._closed = True
            if not wait:
                self._cancel_waiting()
            for _ in self._threads:
                self._queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join()
        for worker in self._workers:
            if worker is not None:
                worker.shutdown(wait=wait, cancel_futures=True)

    def _cancel_waiting(self) -> None:
        """Cancel the queued calls (those a feeding thread has not taken yet)."""
        while True:
            try:
                call = self._queue.get_nowait()
            except queue.Empty:
                return
            if call is not None:
                call.future.cancel()


def _new_pool(workers: int) -> _Pool:
    return _Pool(workers)


def _started(workers: int) -> Future[_Pool | None]:
    """A pool of ``workers`` processes, started in a background thread: the caller goes on meanwhile. Its result
    is None, with a warning, where the pool cannot start: the stages then run in place."""
    started: Future[_Pool | None] = Future()

    def start() -> None:
        try:
            started.set_result(_new_pool(workers))
        except Exception as err:  # noqa: BLE001  (any start-up failure means: run in place)
            _log.warning("stage worker processes could not start (%s: %s); the stages run in this process",
                         type(err).__name__, err)
            started.set_result(None)

    threading.Thread(target=start, name="nodecore-stage-workers", daemon=True).start()
    return started


@contextmanager
def worker_processes(workers: int) -> Iterator[None]:
    """Let :func:`call` run functions in ``workers`` worker processes (0: in place) until the block ends.

    The workers start in the background (the block goes on at once; the first call waits for them). Blocks may
    overlap (flows in threads of one process): the first opens the pool, with its ``workers``, and the last to end
    shuts it down, after the calls submitted to it; a block that ends by an exception cancels the calls still
    waiting for a worker and does not wait for the running ones. A call submitted after that runs in place.
    """
    global _pool, _workers, _blocks
    if workers <= 0:
        yield
        return
    with _LOCK:
        _blocks += 1
        if _pool is None:
            _pool, _workers = _started(workers), workers
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        with _LOCK:
            _blocks -= 1
            started = _pool if _blocks == 0 else None
            if started is not None:
                _pool = None
        if started is not None:
            pool = started.result()
            if pool is not None:
                pool.shutdown(wait=not failed)


def active_workers() -> int:
    """How many worker processes :func:`call` uses now (0: it calls in place, also where the pool failed to
    start)."""
    started = _pool
    if started is None or (started.done() and started.result() is None):
        return 0
    return _workers


def spare_cores() -> int:
    """How many of this host's cores no call in a worker process occupies now (a call waiting for a worker counts);
    0 where no pool is open. A stage may split its work into that many parallel calls without slowing another
    stage's (a training's) or waiting for a worker."""
    return max(0, min(active_workers(), usable_cores()) - _running)


def submit(fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T] | None:
    """Start ``fn(*args, **kwargs)`` in a worker process and return its future; None where no pool is open, or
    where ``fn`` is defined in the ``__main__`` script (a worker never imports that: see
    :mod:`tasks.worker_preload`), so that it runs in place.

    The future raises :class:`~concurrent.futures.process.BrokenProcessPool` if its worker died; that worker is
    replaced for later calls, and the other workers' calls are not affected.
    """
    if getattr(fn, "__module__", None) in ("__main__", "__mp_main__"):
        return None
    with _LOCK:
        started = _pool
    pool = None if started is None else started.result()
    if pool is None:
        return None
    try:
        future = pool.submit(fn, *args, **kwargs)
    except PoolClosed:  # its block ended meanwhile: in place, as outside a block
        return None
    global _running
    with _LOCK:
        _running += 1

    def done(finished: Future[_T]) -> None:
        global _running
        with _LOCK:
            _running -= 1

    future.add_done_callback(done)
    return future


def call(fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
    """``fn(*args, **kwargs)`` in a worker process while :func:`worker_processes` is open, else in place.

    ``fn`` must be a module-level function of an importable module (one of the ``__main__`` script runs in place)
    and its arguments and result picklable. Its exception is re-raised
    here. A worker that dies (killed, out of memory) fails this call with
    :class:`~concurrent.futures.process.BrokenProcessPool`, which the stage's retries treat as transient; the
    calls in the other workers go on, and a new worker takes this one's place.
    """
    future = submit(fn, *args, **kwargs)
    return fn(*args, **kwargs) if future is None else future.result()
