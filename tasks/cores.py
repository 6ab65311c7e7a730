"""How a host's cores are shared: how many intra-op threads one CPU training gets.

A CPU training holds one of ``cores`` device slots (see :mod:`tasks.slots`), so it gets ``cores // limit``
torch intra-op threads, one with the default limit. More would oversubscribe the cores: measured on 2 cores,
two trainings of the tutorial field in threads of one process, each with torch's default of 2 intra-op
threads, took 2.35 s together against 1.34 s one after the other; with one thread each, 1.49 s. Lowering the
limit in the UI gives each training more threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tasks.grid import usable_cores


def cpu_threads(device: str, limit: int) -> int | None:
    """Intra-op threads for one training on ``device`` holding one of ``limit`` slots; None off the CPU."""
    if device != "cpu":
        return None
    return max(1, usable_cores() // max(limit, 1))


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads (None: unchanged), restoring the count after.

    torch's count is per process, and each thread picks it up on its first parallel op: set in the training's
    own thread, it holds there; a training beside it in another thread sets its own, the same value.
    """
    if threads is None:
        yield
        return
    import torch  # here, not at import: the flow process counts cores without importing torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
