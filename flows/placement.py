"""Where a Dask cluster runs each training: spread over the cluster's hosts, not piled where the inputs are.

Dask places a task on the worker that holds its inputs when it can, so the trainings of a small grid all queue
on the host that built the dataset and field while the other hosts idle (seen in the multi-host test). Each
training is therefore submitted with a *loose* restriction to one worker, taken in turn from each host: the
scheduler keeps to it while that worker lives, runs the task elsewhere when it is gone, and an idle worker may
still steal it. The stages after a training follow it to its worker, where their inputs are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any


def interleaved_workers(workers: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Worker addresses ordered host by host in turn (first worker of each host, then the second, ...), from a
    scheduler's ``scheduler_info()["workers"]`` (address -> info with its ``host``)."""
    by_host: dict[str, list[str]] = {}
    for address in sorted(workers):
        by_host.setdefault(str(workers[address].get("host", address)), []).append(address)
    hosts = [by_host[host] for host in sorted(by_host)]
    return [host[i] for i in range(max(map(len, hosts), default=0)) for host in hosts if i < len(host)]


def training_placements(task_runner: Any, count: int) -> list[contextlib.AbstractContextManager]:
    """A context to submit each of ``count`` trainings in: on a Dask task runner, ``dask.annotate`` with a loose
    restriction to one worker, the workers taken in :func:`interleaved_workers` order; elsewhere (or with no
    worker connected yet) contexts that change nothing."""
    if type(task_runner).__name__ != "DaskTaskRunner":
        return [contextlib.nullcontext() for _ in range(count)]
    import dask

    order = interleaved_workers(task_runner.client.scheduler_info(n_workers=-1).get("workers", {}))
    if not order:
        return [contextlib.nullcontext() for _ in range(count)]
    return [dask.annotate(workers=[order[i % len(order)]], allow_other_workers=True) for i in range(count)]
