"""What a dispatched cell is sent: the store as the dispatching host names it (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

import flows.dispatch
from tasks.cache import StageOutput
from tasks.config import PipelineConfig
from tasks.grid import Cell


class _Sent(Exception):
    pass


def test_a_relative_artifacts_folder_is_sent_as_this_hosts_absolute_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    sent: dict = {}

    def run_deployment(name: str, *, parameters: dict, **options: object) -> None:
        sent.update(parameters)
        raise _Sent

    monkeypatch.setattr(flows.dispatch, "run_deployment", run_deployment)
    config = PipelineConfig.model_validate({"run": {"artifacts_dir": "artifacts", "executor": "deployments"}})
    output = StageOutput(stage="generate-dataset", key="0" * 24, files={}, digests={})
    with pytest.raises(_Sent):
        flows.dispatch.dispatch_cell.fn(config=config, cell=Cell(solver="euler", device="cpu"), pool="cpu",
                                        device="cpu", env={}, dataset=output, field=output)
    assert sent["config"].run.artifacts_dir == str((tmp_path / "artifacts").resolve())
    assert sent["config"].model_copy(update={"run": config.run}) == config  # nothing else changed


@pytest.mark.parametrize("stale", ["superseded", "unverified"])
def test_a_cell_whose_outputs_another_build_replaced_is_dispatched_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stale: str) -> None:
    """Raced by a timed-out host's build of its training: the result names an output that is no longer its key's,
    so the dispatch raises CellLost, which the training flow retries (the retry takes the winner from the cache)."""
    from types import SimpleNamespace

    from prefect.states import Completed

    def run_deployment(name: str, *, parameters: dict, **options: object) -> SimpleNamespace:
        return SimpleNamespace(id="run-1", state=Completed())

    def superseded(path: str, store: object) -> None:
        if stale == "unverified":  # e.g. the store lost a file of it: the new run rebuilds it
            raise flows.dispatch.UnverifiedOutput("cell result names an output which has no verified manifest")
        raise flows.dispatch.SupersededOutput("cell result names an output that another build of that key has replaced")

    monkeypatch.setattr(flows.dispatch, "run_deployment", run_deployment)
    monkeypatch.setattr(flows.dispatch, "read_cell_result", superseded)
    config = PipelineConfig.model_validate({"run": {"artifacts_dir": str(tmp_path), "executor": "deployments"}})
    output = StageOutput(stage="generate-dataset", key="0" * 24, files={}, digests={})
    with pytest.raises(flows.dispatch.CellLost, match="(another build|no verified manifest).* running it again"
                       ) as raised:
        flows.dispatch.dispatch_cell.fn(config=config, cell=Cell(solver="euler", device="cpu"), pool="cpu",
                                        device="cpu", env={}, dataset=output, field=output)
    assert flows.dispatch._lost_cells_only(None, None, SimpleNamespace(result=lambda: (_ for _ in ()).throw(
        raised.value)))  # the retry condition takes it


def test_a_cell_run_is_started_with_the_heartbeat_period_and_a_crashed_one_is_stopped_before_its_retry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The zombie window assumes the dispatcher's period, so the cell run gets it; a run the server marked Crashed
    (no heartbeats) may still be alive on a stalled host, so its worker is told to stop it (a forced Cancelling)."""
    from types import SimpleNamespace

    from prefect.states import Crashed

    sent: dict = {}
    states: list = []

    def run_deployment(name: str, *, parameters: dict, job_variables: dict, **options: object) -> SimpleNamespace:
        sent.update(job_variables)
        return SimpleNamespace(id="run-1", state=Crashed(message="no heartbeat for 540 s"))

    class Client:
        def __enter__(self) -> "Client":
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def set_flow_run_state(self, run_id: str, state: object, force: bool = False) -> None:
            states.append((run_id, state.type.value, force))

    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "45")
    monkeypatch.setattr(flows.dispatch, "run_deployment", run_deployment)
    monkeypatch.setattr(flows.dispatch, "get_client", lambda sync_client: Client())
    config = PipelineConfig.model_validate({"run": {"artifacts_dir": str(tmp_path), "executor": "deployments"}})
    output = StageOutput(stage="generate-dataset", key="0" * 24, files={}, digests={})
    with pytest.raises(flows.dispatch.CellLost, match="crashed"):
        flows.dispatch.dispatch_cell.fn(config=config, cell=Cell(solver="euler", device="cuda:1"), pool="gpu",
                                        device="cuda:0", env={"CUDA_VISIBLE_DEVICES": "1"}, dataset=output,
                                        field=output)
    assert sent["env"] == {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "45", "CUDA_VISIBLE_DEVICES": "1"}
    assert states == [("run-1", "CANCELLING", True)]


class _Runs:
    """A client whose flow run goes through ``states`` (one per read); it records the states set on it."""

    def __init__(self, states: list, events: list | None = None, accept: bool = True) -> None:
        self.states, self.events, self.accept, self.set = list(states), events or [], accept, []

    def __enter__(self) -> "_Runs":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def read_flow_run(self, run_id: str):
        from types import SimpleNamespace

        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return SimpleNamespace(id=run_id, state=state, start_time=state.timestamp)

    def read_events(self, filter, limit: int):
        from types import SimpleNamespace

        since = filter.occurred.since
        return SimpleNamespace(events=[e for e in self.events if e >= since][:limit])

    def set_flow_run_state(self, run_id: str, state, force: bool = False):
        from types import SimpleNamespace

        self.set.append(state.type.value)
        if self.accept:
            self.states = [state]
        return SimpleNamespace(state=state if self.accept else self.states[0])


def _state(kind: str, seconds_ago: float = 0.0):
    from datetime import datetime, timedelta, timezone

    from prefect import states

    state = getattr(states, kind)()
    state.timestamp = datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)
    return state


def test_without_a_cell_timeout_the_dispatch_waits_until_the_run_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run.cell_timeout_seconds`` is None by default: no limit (as run_deployment's own wait)."""
    from types import SimpleNamespace

    client = _Runs([_state("Running"), _state("Running"), _state("Completed")])
    monkeypatch.setattr(flows.dispatch, "get_client", lambda sync_client: client)
    run = flows.dispatch.wait_for_run(SimpleNamespace(id="run-1", state=_state("Scheduled")), timeout=None,
                                      poll_seconds=0)
    assert run.state.is_completed()


@pytest.mark.parametrize(("events_ago", "accept", "crashed"), [
    ([], True, False),  # the server keeps no event of the run at all: no guess
    ([30.0], True, True),  # it beat, then went silent: crashed
    ([30.0, 1.0], True, False),  # it beat just now: alive
    ([30.0], False, False),  # the server refused the Crashed state: not taken for crashed
])
def test_the_dispatchers_watch_crashes_only_a_run_it_heard_before_and_not_since(
        events_ago: list, accept: bool, crashed: bool) -> None:
    from datetime import datetime, timedelta, timezone

    from flows.zombies import crash_if_silent

    now = datetime.now(timezone.utc)
    client = _Runs([_state("Running", seconds_ago=60)], events=[now - timedelta(seconds=s) for s in events_ago],
                   accept=accept)
    assert crash_if_silent(client, client.read_flow_run("run-1"), 10.0) is crashed
    assert client.set == (["CRASHED"] if len(events_ago) == 1 else [])
