"""The cache check before submitting: a remote store's cells are checked side by side, each answer kept with its cell."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from flows import stages as stages_module
from flows.stages import Stages
from tasks.cache import StageOutput
from tasks.config import PipelineConfig
from tasks.grid import grid_cells

SOLVERS = ["euler", "midpoint", "rk4", "dopri5", "tsit5", "bosh3"]


def _output(name: str) -> StageOutput:
    return StageOutput(stage="x", key=name, files={}, digests={}, data={"name": name})


def _stages(root: str) -> Stages:
    return Stages(PipelineConfig.model_validate({"solvers": SOLVERS, "run": {"artifacts_dir": root}}))


def _fake_check(monkeypatch: pytest.MonkeyPatch, delay: float) -> list[str]:
    """Replace one cell's check by a sleep that answers 'cached' for every other solver; record the threads."""
    threads: list[str] = []

    def cached_cell(self: Stages, cell: Any, dataset: StageOutput, field: StageOutput) -> dict | None:
        threads.append(threading.current_thread().name)
        time.sleep(delay)  # a round trip to the store
        return None if SOLVERS.index(cell.solver) % 2 else {"trained": _output(cell.name)}

    monkeypatch.setattr(Stages, "cached_cell", cached_cell)
    return threads


def test_a_remote_stores_cells_are_checked_side_by_side_and_keep_their_own_answers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    threads = _fake_check(monkeypatch, delay=0.3)
    stages = _stages(f"memory://nodecore-{uuid.uuid4().hex[:8]}/run")
    cells = grid_cells(SOLVERS, ["cpu"])
    started = time.perf_counter()
    found = stages.cached_cells(cells, _output("dataset"), {"node": _output("field")})
    elapsed = time.perf_counter() - started
    assert {cell.solver: outputs["trained"].key for cell, outputs in found.items()} == {
        "euler": "euler@cpu", "rk4": "rk4@cpu", "tsit5": "tsit5@cpu"}
    assert len(set(threads)) == len(SOLVERS) and threading.current_thread().name not in threads
    assert elapsed < 0.3 * len(SOLVERS) / 2  # overlapped: one after the other would take 1.8 s


def test_a_local_stores_cells_are_checked_in_this_thread(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    threads = _fake_check(monkeypatch, delay=0.0)
    found = _stages(str(tmp_path)).cached_cells(grid_cells(SOLVERS, ["cpu"]), _output("d"), {"node": _output("f")})
    assert len(found) == 3 and set(threads) == {threading.current_thread().name}


def test_without_a_cached_dataset_or_field_nothing_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    threads = _fake_check(monkeypatch, delay=0.0)
    stages = _stages(f"memory://nodecore-{uuid.uuid4().hex[:8]}/run")
    cells = grid_cells(SOLVERS, ["cpu"])
    assert stages.cached_cells(cells, None, {"node": _output("f")}) == {}
    assert stages.cached_cells(cells, _output("d"), {"node": None}) == {}
    assert threads == []


def test_a_check_in_a_worker_thread_sees_the_callers_context(monkeypatch: pytest.MonkeyPatch) -> None:
    import contextvars

    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")
    seen: list[str] = []

    def cached_cell(self: Stages, cell: Any, dataset: StageOutput, field: StageOutput) -> None:
        seen.append(marker.get())  # the flow run context reaches a check's warnings the same way

    monkeypatch.setattr(Stages, "cached_cell", cached_cell)
    token = marker.set("flow run")
    try:
        _stages(f"memory://nodecore-{uuid.uuid4().hex[:8]}/run").cached_cells(
            grid_cells(SOLVERS, ["cpu"]), _output("d"), {"node": _output("f")})
    finally:
        marker.reset(token)
    assert seen == ["flow run"] * len(SOLVERS)
    assert stages_module.REMOTE_CHECKS >= 2
