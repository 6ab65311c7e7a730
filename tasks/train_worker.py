"""A CPU training's epochs in a stage worker process (:mod:`tasks.offload`), in step with its training task.

Trainings of small models are Python-bound, so several in threads of one process take turns on the GIL. Here the
epochs run in a worker process while the task, in the flow's thread, keeps everything else: the device slot,
logs and progress, resume checkpoints (signing, the store), the fault hook. The worker sends each epoch's
:class:`~nodecore.training.EpochStats`, and at the epochs where the task saves a resume checkpoint also the weights
and optimizer state of that epoch; it never waits for the task. A task that fails (a fault after a checkpoint, a
lost API) closes the connection, and the worker stops at its next epoch (it finishes the one it is in). The
results are the same bit for bit as training in the thread: the same initial state, data, seeds and thread count.

Only this process's own worker sends here: the states are ``torch.save`` bytes read back with
``weights_only=True``, and the rest is plain data.
"""

from __future__ import annotations

import io
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks import offload

_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Job:
    """What the worker needs to rebuild the model and run epochs ``start_epoch .. epochs - 1``."""

    model_config: dict[str, Any]
    state: bytes  # torch.save of (model state_dict, optimizer state_dict or None for a fresh optimizer)
    train_set: Path
    t_end: float
    t_points: int
    epochs: int
    lr: float
    batch_size: int | None
    start_epoch: int
    threads: int
    sync_epochs: frozenset[int]  # epochs (counted from 1) after which the task needs the state


def pack(model: Any, optimizer: Any) -> bytes:
    """The model's and optimizer's state as bytes; the optimizer's ``state_dict()`` may be None (a fresh one)."""
    import torch

    buffer = io.BytesIO()
    torch.save((model.state_dict(), optimizer.state_dict()), buffer)
    return buffer.getvalue()


def unpack_into(state: bytes, model: Any, optimizer: Any) -> None:
    """Load :func:`pack`'s bytes into ``model`` and ``optimizer`` (tensors only: ``weights_only=True``); a fresh
    optimizer's state (None) leaves ``optimizer`` as it is, fresh too."""
    import torch

    weights, optimizer_state = torch.load(io.BytesIO(state), weights_only=True)
    model.load_state_dict(weights)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)


def run_epochs(connection: Any, job: Job) -> float:
    """The worker's side: rebuild the model, run the epochs, report each; return the seconds the epochs took."""
    import torch

    from nodecore.checkpoints import build_model
    from nodecore.dataset_io import read_dataset
    from nodecore.training import depth_grid, train

    model = build_model(job.model_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=job.lr)
    unpack_into(job.state, model, optimizer)
    X, y, _ = read_dataset(job.train_set)
    span = depth_grid(job.t_end, job.t_points)

    def report(stats: Any) -> None:
        synced = stats.epoch + 1 in job.sync_epochs
        connection.send(("epoch", stats, pack(model, optimizer) if synced else None))

    torch.set_num_threads(job.threads)
    started = time.perf_counter()
    try:
        train(model, X, y, t_span=span, epochs=job.epochs, lr=job.lr, batch_size=job.batch_size,
              optimizer=optimizer, start_epoch=job.start_epoch, callback=report)
        connection.send(("done", pack(model, optimizer)))
    except (BrokenPipeError, ConnectionResetError):  # the task stopped listening: nothing more to tell it
        pass
    finally:
        connection.close()
    return time.perf_counter() - started


def train_in_worker(model: Any, optimizer: Any, job: Job, on_epoch: Callable[[Any], None]) -> bool:
    """Run ``job`` in a stage worker, calling ``on_epoch`` here for each epoch; False where no pool is open
    (nothing ran: train in place).

    At each epoch of ``job.sync_epochs`` (before its ``on_epoch``) and at the end, ``model`` and ``optimizer``
    hold the worker's state of that epoch. An exception of ``on_epoch`` stops the worker and propagates; so does
    the worker's own (its type kept), and a worker that died raises :class:`BrokenProcessPool` (retried as
    transient).
    """
    here, there = multiprocessing.get_context("forkserver").Pipe()
    future = offload.submit(run_epochs, there, job)
    if future is None:
        here.close()
        there.close()
        return False
    try:
        while True:
            if not here.poll(_POLL_SECONDS):
                if future.done():
                    future.result()  # the worker's error, or a dead worker's BrokenProcessPool
                    raise BrokenProcessPool("the training worker ended without reporting its result")
                continue
            try:
                message = here.recv()
            except EOFError:
                future.result()
                raise BrokenProcessPool("the training worker closed its connection") from None
            if not there.closed:
                there.close()  # the worker holds its end now: its death reads as EOF here
            if message[0] == "done":
                unpack_into(message[1], model, optimizer)
                return True
            _, stats, state = message
            if state is not None:
                unpack_into(state, model, optimizer)
            on_epoch(stats)
    finally:
        here.close()
        if not there.closed:
            there.close()
