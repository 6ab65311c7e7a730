"""How a host's cores are shared: how many intra-op threads one CPU training gets.

A CPU training holds one of ``cores`` device slots (see :mod:`tasks.slots`), so it gets ``cores // limit``
torch intra-op threads, one with the default limit. More would oversubscribe the cores: measured on 2 cores,
two trainings of the tutorial field in threads of one process, each with torch's default of 2 intra-op
threads, took 2.35 s together against 1.34 s one after the other; with one thread each, 1.49 s. Lowering the
limit in the UI gives each training more threads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tasks.grid import usable_cores


def cpu_threads(device: str, limit: int) -> int | None:
    """Intra-op threads for one training on ``device`` holding one of ``limit`` slots; None off the CPU."""
    if device != "cpu":
        return None
    return max(1, usable_cores() // max(limit, 1))


_LOCK = threading.Lock()
_active = 0  # blocks of torch_threads running now, in any thread of this process
_default: int | None = None  # the count before the first of them began


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads (None: unchanged); the process's count is put back
    when the last such block of the process ends.

    torch keeps one count per process, and each thread takes it the first time it does parallel work. Blocks in
    several threads at once (trainings in a thread pool) therefore share one saved default: restoring per block
    would let the last one to end put back another's setting (and leave the process at one thread). A thread
    that first used torch while a block was running keeps that block's count until it sets its own.
    """
    global _active, _default
    if threads is None:
        yield
        return
    import torch  # here, not at import: the flow process counts cores without importing torch

    with _LOCK:
        if _active == 0:
            _default = torch.get_num_threads()
        _active += 1
        torch.set_num_threads(threads)  # the global count, and this thread's own
    try:
        yield
    finally:
        with _LOCK:
            _active -= 1
            if _active == 0 and _default is not None:
                torch.set_num_threads(_default)
