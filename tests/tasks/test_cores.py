"""How a CPU training shares the host's cores: one intra-op thread per slot by default."""

from __future__ import annotations

import threading

import pytest
import torch

from tasks import cores
from tasks.cores import cpu_threads, torch_threads
from tasks.grid import usable_cores


def test_usable_cores_counts_the_affinity_mask() -> None:
    assert 1 <= usable_cores() <= (__import__("os").cpu_count() or 1)


@pytest.mark.parametrize(("available", "limit", "expected"), [(8, 8, 1), (8, 2, 4), (8, 3, 2), (2, 5, 1), (4, 0, 4)])
def test_a_cpu_training_gets_the_cores_divided_by_the_slot_limit(monkeypatch: pytest.MonkeyPatch, available: int,
                                                                  limit: int, expected: int) -> None:
    monkeypatch.setattr(cores, "usable_cores", lambda: available)
    assert cpu_threads("cpu", limit) == expected


def test_a_gpu_training_leaves_the_thread_count_alone() -> None:
    assert cpu_threads("cuda:0", 1) is None
    before = torch.get_num_threads()
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_the_thread_count_holds_inside_the_block_of_a_worker_thread_and_is_restored_after() -> None:
    before = torch.get_num_threads()
    seen: list[int] = []

    def training() -> None:
        with torch_threads(1):
            torch.ones(64, 64) @ torch.ones(64, 64)  # a parallel op: the thread's own count is in use
            seen.append(torch.get_num_threads())
        seen.append(torch.get_num_threads())

    worker = threading.Thread(target=training)
    worker.start()
    worker.join()
    assert seen == [1, before]
    assert torch.get_num_threads() == before


def test_overlapping_trainings_in_threads_put_the_processes_count_back_when_the_last_ends() -> None:
    """A enters, B enters (in a thread that never used torch), A leaves, B leaves: the default is back, for this
    thread and for a thread started afterwards (restoring per block left the process at one thread)."""
    before = torch.get_num_threads()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, int] = {}

    def a() -> None:
        with torch_threads(1):
            a_in.set()
            b_in.wait(5)
        a_out.set()
        seen["after a"] = torch.get_num_threads()

    def b() -> None:
        a_in.wait(5)
        with torch_threads(1):
            b_in.set()
            a_out.wait(5)
            seen["b inside, a gone"] = torch.get_num_threads()

    workers = [threading.Thread(target=a), threading.Thread(target=b)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    later: list[int] = []
    fresh = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    fresh.start()
    fresh.join()
    assert seen["b inside, a gone"] == 1  # B still trains with its count
    assert torch.get_num_threads() == before and later == [before]
