"""When a stage fails, the run ends with that stage's own error, not a downstream stage's "never ran"."""

from __future__ import annotations

from pathlib import Path

import pytest

import tasks.faults
from flows.server import ServerInfo
from tests.flows._pipeline import run_flow, tiny_config


@pytest.fixture(autouse=True)
def fresh_fault_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks.faults, "_attempts", type(tasks.faults._attempts)())


@pytest.mark.parametrize("stage", ["generate", "train"])  # upstream of every cell / inside each cell
def test_a_failed_stage_ends_the_run_with_its_own_error(
    prefect_server: ServerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    monkeypatch.setenv(tasks.faults.ENV, f"{stage}:permanent")
    state = run_flow(prefect_server, tiny_config(tmp_path / "artifacts"))  # two cells
    assert state.is_failed()
    assert f"InjectedPermanentFault: injected permanent failure in stage {stage!r}" in state.message, state.message
    assert "UnfinishedRun" not in state.message
    assert isinstance(state.result(raise_on_failure=False), tasks.faults.InjectedPermanentFault)


def test_a_run_started_by_prefect_refuses_an_artifacts_path_that_is_a_file(
    prefect_server: ServerInfo, tmp_path: Path
) -> None:
    """Deployments and the UI form skip main()'s pre-flight: the flow itself names the bad path, before any stage."""
    taken = tmp_path / "taken"
    taken.write_text("a file, not a folder")
    state = run_flow(prefect_server, tiny_config(taken / "artifacts", solvers=["euler"]))
    assert state.is_failed()
    assert "exists and is not a folder" in state.message and str(taken) in state.message
    assert "FileExistsError" not in state.message and taken.read_text() == "a file, not a folder"
