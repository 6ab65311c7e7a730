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
