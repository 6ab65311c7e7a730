"""Tests for tasks.grid: device resolution with faked device counts, the grid, and device slots on a real server."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import ContextManager

import pytest
from prefect.client.orchestration import get_client

from tasks.grid import (
    Cell,
    artifact_key,
    device_slot,
    grid_cells,
    physical_device,
    resolve_devices,
    slot_limit,
    usable_cores,
)
from flows.server import ServerInfo, prefect_settings_context
from tasks.slots import SLOT_DIR_ENV, hold_device

# --- resolve_devices -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "cuda_count", "expected"),
    [
        (["auto"], 0, ["cpu"]),
        (["auto"], 2, ["cuda:0", "cuda:1"]),
        (["cuda"], 1, ["cuda:0"]),
        (["cuda"], 2, ["cuda:0"]),
        (["cpu"], 2, ["cpu"]),
        (["cuda:1", "cpu"], 2, ["cuda:1", "cpu"]),  # order kept
        (["cpu", "auto"], 0, ["cpu"]),  # duplicates removed ...
        (["auto", "cuda:1"], 2, ["cuda:0", "cuda:1"]),
        (["cuda", "cuda:0", "auto"], 2, ["cuda:0", "cuda:1"]),  # ... whatever spelling produced them
    ],
)
def test_resolve_devices(requested: list[str], cuda_count: int, expected: list[str]) -> None:
    assert resolve_devices(requested, cuda_count=cuda_count) == expected


@pytest.mark.parametrize(
    ("requested", "cuda_count", "valid"),
    [
        (["cuda:2"], 2, "valid devices: cpu, cuda:0, cuda:1, auto"),
        (["cuda:0"], 0, "valid devices: cpu, auto"),
        (["cuda"], 0, "valid devices: cpu, auto"),
        (["cpu", "cuda:7"], 1, "valid devices: cpu, cuda:0, auto"),
    ],
)
def test_missing_cuda_device_is_rejected_naming_the_valid_ones(
    requested: list[str], cuda_count: int, valid: str
) -> None:
    with pytest.raises(ValueError) as info:
        resolve_devices(requested, cuda_count=cuda_count)
    assert valid in str(info.value)
    assert f"{cuda_count} CUDA device(s)" in str(info.value)


def test_unchecked_devices_belong_to_other_hosts() -> None:
    assert resolve_devices(["cuda:3", "cpu"], cuda_count=0, check=False) == ["cuda:3", "cpu"]
    assert resolve_devices(["auto"], cuda_count=0, check=False) == ["cpu"]


# --- grid and slots ------------------------------------------------------------------------------------


def test_grid_cells_pair_every_solver_with_every_device() -> None:
    cells = grid_cells(["rk4", "euler"], ["cpu", "cuda:0"])
    assert [cell.name for cell in cells] == ["rk4@cpu", "rk4@cuda:0", "euler@cpu", "euler@cuda:0"]
    assert cells[1] == Cell(solver="rk4", device="cuda:0")
    assert grid_cells(["dopri5"], ["cpu"]) == [Cell(solver="dopri5", device="cpu")]


def test_the_seed_axis_gives_each_cell_one_per_seed_side_by_side() -> None:
    cells = grid_cells(["rk4", "euler"], ["cpu"], ["node", "anode", "deq"], seeds=[0, 7])
    assert [cell.name for cell in cells] == [
        "rk4@cpu#s0", "rk4@cpu#s7", "euler@cpu#s0", "euler@cpu#s7", "anode-rk4@cpu#s0", "anode-rk4@cpu#s7",
        "anode-euler@cpu#s0", "anode-euler@cpu#s7", "deq-anderson@cpu#s0", "deq-anderson@cpu#s7"]
    assert cells[1] == Cell(solver="rk4", device="cpu", seed=7)
    # one field stage (initial weights) per model kind and seed, shared by that seed's solvers
    assert list(dict.fromkeys(cell.field_key for cell in cells)) == [
        "node#s0", "node#s7", "anode#s0", "anode#s7", "deq#s0", "deq#s7"]
    assert len(set(cells)) == len(cells)


@pytest.mark.parametrize("seeds", [(), [0], [5]])
def test_one_seed_gives_the_cells_and_names_of_a_grid_without_the_axis(seeds: list[int]) -> None:
    cells = grid_cells(["rk4"], ["cpu", "cuda:0"], ["node", "anode"], seeds=seeds)
    assert cells == grid_cells(["rk4"], ["cpu", "cuda:0"], ["node", "anode"])
    assert [cell.name for cell in cells] == ["rk4@cpu", "rk4@cuda:0", "anode-rk4@cpu", "anode-rk4@cuda:0"]
    assert [cell.field_key for cell in cells] == ["node", "node", "anode", "anode"]  # the fields' old names


def test_a_seeded_cell_name_makes_a_valid_artifact_key() -> None:
    from prefect.types.names import raise_on_name_alphanumeric_dashes_only

    name = Cell(solver="adaptive_heun", device="cuda:1", model="anode", seed=4294967295).name
    key = artifact_key("nodecore-checkpoint", name)
    assert name == "anode-adaptive_heun@cuda:1#s4294967295"
    assert key == "nodecore-checkpoint-anode-adaptive-heun-cuda-1-s4294967295"
    assert raise_on_name_alphanumeric_dashes_only(key) == key
    assert artifact_key("nodecore-training", Cell(solver="rk4", device="cpu", seed=1).name) != artifact_key(
        "nodecore-training", Cell(solver="rk4", device="cpu", seed=11).name)


def test_device_slots_give_one_training_per_gpu() -> None:
    assert device_slot("cuda:1", host="gpu-box") == "nodecore-device-gpu-box-cuda-1"
    assert device_slot("cpu", host="gpu-box") == "nodecore-device-gpu-box-cpu"
    assert device_slot("cpu") == f"nodecore-device-{socket.gethostname()}-cpu"
    assert slot_limit("cuda:0") == slot_limit("cuda:3", cpu_slots=8) == 1
    assert slot_limit("cpu", cpu_slots=3) == 3 and slot_limit("cpu") == usable_cores()


@pytest.mark.parametrize(
    ("device", "visible", "expected"),
    [
        ("cuda:1", "2,3", "cuda:3"),
        ("cuda", "2,3", "cuda:2"),
        ("cuda:0", "", "cuda:0"),
        ("cpu", "1", "cpu"),
        ("cuda:5", "0,1", "cuda:5"),  # beyond the visible list: left as is
    ],
)
def test_physical_device_follows_cuda_visible_devices(device: str, visible: str, expected: str) -> None:
    assert physical_device(device, visible=visible) == expected


def _hold_at_once(info: ServerInfo, hold: Callable[[], ContextManager[object]], *, holders: int = 2,
                  seconds: float = 0.6) -> list[tuple[float, float]]:
    """Enter ``hold()`` from ``holders`` threads at once; return each one's (enter, exit) times, sorted."""
    spans: list[tuple[float, float]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(holders)

    def hold_slot() -> None:
        try:
            with prefect_settings_context(info):  # settings contexts do not cross threads
                start.wait()
                with hold():
                    entered = time.monotonic()
                    time.sleep(seconds)
                    spans.append((entered, time.monotonic()))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=hold_slot) for _ in range(holders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert len(spans) == holders
    return sorted(spans)


@pytest.fixture
def private_slots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slot lock files of this test only: other test sessions on this host use the same slot names."""
    monkeypatch.setenv(SLOT_DIR_ENV, str(tmp_path / "slots"))


@pytest.mark.usefixtures("private_slots")
def test_a_gpu_slot_serialises_trainings(prefect_server: ServerInfo) -> None:
    """Two trainings on cuda:0 start together on a server that has no limit yet; they take turns."""
    (_, first_exit), (second_enter, _) = _hold_at_once(prefect_server, lambda: hold_device("cuda:0"))
    assert second_enter >= first_exit, "two trainings held cuda:0 at once"
    with prefect_settings_context(prefect_server), get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(device_slot("cuda:0")).limit == 1


@pytest.mark.usefixtures("private_slots")
def test_the_overlap_measurement_can_see_overlap(prefect_server: ServerInfo) -> None:
    """The control: with the device's limit raised to 2 on the server, both holders are in together."""
    device = "cuda:9"  # a limit of this test's own
    with prefect_settings_context(prefect_server), get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name=device_slot(device), limit=2)
    (_, first_exit), (second_enter, _) = _hold_at_once(
        prefect_server, lambda: hold_device(device), seconds=4.0)  # slack for a busy server (2 s missed once)
    assert second_enter < first_exit


def test_cuda_device_count_is_torchs_and_zero_when_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from tasks.grid import cuda_device_count

    assert cuda_device_count() == torch.cuda.device_count()
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert cuda_device_count() == 0


def test_cuda_device_count_asks_torch_only_where_a_gpu_driver_is(monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.grid

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(tasks.grid, "_GPU_DRIVER_PATHS", ("/nonexistent/nvidia",))
    monkeypatch.setitem(sys.modules, "torch", None)  # importing torch now fails
    if sys.platform == "linux":
        assert tasks.grid.cuda_device_count() == 0
