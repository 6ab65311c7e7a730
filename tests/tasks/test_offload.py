"""Stage compute in warm worker processes (tasks.offload): where it runs, what comes back, a dead worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
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


def test_workers_exit_when_the_flow_process_is_killed(tmp_path):
    """A SIGKILLed flow process leaves no worker behind (nor the forkserver, which waits for its children)."""
    script = tmp_path / "flow.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from tasks import offload
        if __name__ == "__main__":
            with offload.worker_processes(1):
                print(offload.call(os.getpid), flush=True)
                time.sleep(60)
    """))
    flow = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(flow.stdout.readline())
        os.kill(flow.pid, signal.SIGKILL)
        flow.wait(timeout=10)
        deadline = time.monotonic() + 15
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(worker), f"worker {worker} outlived its killed flow process"
    finally:
        flow.kill()


def test_a_pool_that_cannot_start_leaves_the_calls_in_place(monkeypatch):
    def refuse(workers: int) -> None:
        raise OSError("no forkserver here")

    monkeypatch.setattr(offload, "_new_pool", refuse)
    with offload.worker_processes(2):
        assert offload.call(_pid_and_threads)[0] == os.getpid()
        assert offload.active_workers() == 0


def test_overlapping_blocks_share_the_pool_until_the_last_ends():
    first = offload.worker_processes(1)
    second = offload.worker_processes(1)
    first.__enter__()
    second.__enter__()
    pid = offload.call(_pid_and_threads)[0]
    first.__exit__(None, None, None)  # the other flow's block is still open: its pool stays
    assert offload.active_workers() == 1 and offload.call(_pid_and_threads)[0] == pid
    second.__exit__(None, None, None)
    assert offload.active_workers() == 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
