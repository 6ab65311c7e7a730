"""Stage compute in warm worker processes (tasks.offload): where it runs, what comes back, a dead worker."""

from __future__ import annotations

import os
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from tasks import offload


def _pid_and_threads() -> tuple[int, int]:
    import torch

    return os.getpid(), torch.get_num_threads()


def _refuse(value: int) -> None:
    raise ValueError(f"bad value {value}")


def _die() -> None:
    os._exit(3)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_without_a_pool_a_call_runs_in_place():
    assert offload.active_workers() == 0
    assert offload.call(_pid_and_threads)[0] == os.getpid()


def test_inside_the_block_a_call_runs_in_a_worker_with_one_torch_thread(tmp_path):
    with offload.worker_processes(1):
        assert offload.active_workers() == 1
        pid, threads = offload.call(_pid_and_threads)
        written = offload.call(_write, tmp_path / "out.txt", text="from a worker")
    assert pid != os.getpid()
    assert threads == 1
    assert written == tmp_path / "out.txt" and written.read_text() == "from a worker"
    assert offload.active_workers() == 0
    assert offload.call(_pid_and_threads)[0] == os.getpid()  # closed: in place again


def test_an_exception_comes_back_with_its_type_so_retries_classify_it():
    with offload.worker_processes(1), pytest.raises(ValueError, match="bad value 7"):
        offload.call(_refuse, 7)


def test_a_dead_worker_fails_its_call_and_the_next_call_gets_a_new_pool():
    with offload.worker_processes(1):
        first, _ = offload.call(_pid_and_threads)
        with pytest.raises(BrokenProcessPool):
            offload.call(_die)
        second, _ = offload.call(_pid_and_threads)
    assert second not in (first, os.getpid())


def test_blocks_do_not_nest_and_zero_workers_means_in_place():
    with offload.worker_processes(0):
        assert offload.active_workers() == 0
    with offload.worker_processes(2):
        with offload.worker_processes(1):
            assert offload.active_workers() == 2
        assert offload.active_workers() == 2  # the inner block did not close the outer pool


def test_the_default_count_is_one_per_core_and_at_most_one_per_cell(monkeypatch):
    monkeypatch.setattr(offload, "usable_cores", lambda: 4)
    assert offload.stage_processes(None, 3) == 4
    assert offload.stage_processes(None, 9) == 5
    assert offload.stage_processes(0, 9) == 0
    assert offload.stage_processes(1, 9) == 1
