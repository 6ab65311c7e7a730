"""Stage compute in warm worker processes (tasks.offload): where it runs, what comes back, a dead worker."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

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


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def test_spare_cores_counts_the_calls_running_or_waiting_for_a_worker(monkeypatch):
    monkeypatch.setattr(offload, "usable_cores", lambda: 2)
    assert offload.spare_cores() == 0  # no pool: nothing to split work over
    with offload.worker_processes(2):
        assert offload.spare_cores() == 2
        first = offload.submit(_sleep, 1.0)
        assert offload.spare_cores() == 1
        second, third = offload.submit(_sleep, 1.0), offload.submit(_sleep, 0.0)
        assert offload.spare_cores() == 0  # a call waiting for a worker counts too
        for future in (first, second, third):
            future.result()
        deadline = time.monotonic() + 5  # the done callbacks run on the pool's thread, just after
        while offload.spare_cores() != 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert offload.spare_cores() == 2


def test_a_worker_runs_the_call_without_re_running_the_flows_main_script(tmp_path):
    """Workers import the module of the function they run, not the flow's script (nor Prefect, which it imports);
    a function defined in that script runs in place instead of killing the worker that cannot find it."""
    (tmp_path / "probe.py").write_text(textwrap.dedent("""
        import os, sys
        def modules():
            mains = {getattr(sys.modules.get(name), "__file__", None) for name in ("__main__", "__mp_main__")}
            return [os.getpid(), "prefect" in sys.modules, "flow.py" in " ".join(map(str, mains))]
    """))
    marker = tmp_path / "main-ran"
    script = tmp_path / "flow.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys
        sys.path[:0] = [{str(Path(__file__).resolve().parents[2])!r}, {str(tmp_path)!r}]
        with open({str(marker)!r}, "a") as marker:
            marker.write("ran ")
        import prefect
        import probe
        from tasks import offload
        def in_main():
            return os.getpid()
        if __name__ == "__main__":
            with offload.worker_processes(1):
                print(json.dumps([offload.call(probe.modules), offload.call(in_main), os.getpid()]))
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    (worker, has_prefect, has_script), in_main, flow = json.loads(done.stdout)
    assert worker != flow and not has_prefect and not has_script
    assert in_main == flow  # run in place
    assert marker.read_text() == "ran "  # the script ran once: in the flow process, never in a worker
    assert "died" not in done.stderr


def test_a_dead_worker_fails_only_its_own_call_and_the_others_go_on():
    """A worker killed mid-call (out of memory, a kill) does not take the calls of the other workers with it."""
    with offload.worker_processes(2):
        running = offload.submit(_sleep_and_report, 1.5)
        time.sleep(0.3)  # running in its worker before the other one dies
        dying = offload.submit(_die)
        with pytest.raises(BrokenProcessPool):
            dying.result(timeout=30)
        assert running.result(timeout=30) == "slept 1.5"
        after = [offload.call(_pid_and_threads)[0] for _ in range(3)]  # the dead worker's place is taken again
    assert os.getpid() not in after


def _sleep_and_report(seconds: float) -> str:
    time.sleep(seconds)
    return f"slept {seconds}"


def test_calls_waiting_for_a_worker_are_cancelled_when_a_block_fails():
    with pytest.raises(RuntimeError, match="the run failed"), offload.worker_processes(1):
        first = offload.submit(_sleep, 0.5)
        waiting = offload.submit(_sleep, 0.5)
        deadline = time.monotonic() + 30
        while not first.running() and time.monotonic() < deadline:
            time.sleep(0.01)
        raise RuntimeError("the run failed")
    assert waiting.cancelled()
    first.result(timeout=30)  # the running call was left to end on its own


def _reply(connection: Any) -> int:
    connection.send("epoch")
    connection.close()
    return os.getpid()


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors through /proc")
def test_calls_that_hand_a_pipe_to_a_worker_leave_no_descriptor_open():
    """A training's connection crosses to its worker by descriptor passing: after many calls, some of them never
    run (cancelled while waiting for a worker), this process holds as many descriptors as before."""
    context = multiprocessing.get_context("forkserver")

    def hand_over() -> None:
        here, there = context.Pipe()
        future = offload.submit(_reply, there)
        assert here.recv() == "epoch"
        future.result(timeout=30)
        here.close()
        there.close()

    with offload.worker_processes(2):
        hand_over()  # the workers, their pipes and the standard library's descriptor-passing listener are up
        before = _open_descriptors()
        for _ in range(30):
            hand_over()
        assert _open_descriptors() == before
    with pytest.raises(RuntimeError), offload.worker_processes(1):
        offload.call(_pid_and_threads)
        before = _open_descriptors()
        pipes = [context.Pipe() for _ in range(5)]
        waiting = [offload.submit(_sleep, 0.3), *(offload.submit(_reply, there) for _, there in pipes)]
        for here, there in pipes:
            here.close()
            there.close()
        raise RuntimeError("the run failed")
    for future in waiting:
        if not future.cancelled():
            future.exception(timeout=30)
    assert _open_descriptors() <= before


def test_a_worker_whose_replacement_cannot_start_fails_its_call_and_the_next_call_tries_again(monkeypatch):
    with offload.worker_processes(1):
        first = offload.call(_pid_and_threads)[0]
        with pytest.raises(BrokenProcessPool):
            offload.call(_die)
        start = offload._new_worker

        def refuse() -> None:
            raise BrokenProcessPool("the new worker died while starting")

        monkeypatch.setattr(offload, "_new_worker", refuse)
        with pytest.raises(BrokenProcessPool, match="while starting"):  # an error, not a call left hanging
            offload.submit(_pid_and_threads).result(timeout=30)
        monkeypatch.setattr(offload, "_new_worker", start)
        again = offload.call(_pid_and_threads)[0]
        assert offload.spare_cores() == min(1, offload.usable_cores())  # no call counted as running for good
    assert again not in (first, os.getpid())


def test_a_call_reaching_a_pool_that_just_shut_down_runs_in_place():
    """The last block may shut the pool down between a stage's reading it and its submitting: the call then runs
    in place, as outside a block, rather than waiting in a queue that no worker reads."""
    with offload.worker_processes(1):
        pool = offload._pool.result()
        pool.shutdown(wait=True)
        with pytest.raises(offload.PoolClosed):
            pool.submit(_pid_and_threads)
        assert offload.call(_pid_and_threads)[0] == os.getpid()
