"""Attacks on the artifacts store, run against the real pipeline: nothing planted there runs, nothing forged is served.

Each test starts from a private copy of one tiny completed run (one cell), tampers with the store the way an
adversary with write access to a shared folder would, reruns the flow and checks what Prefect served.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
from prefect.serializers import PickleSerializer

import tasks.cache
import tasks.faults
from flows.server import ServerInfo
from tasks.cache import MANIFEST, StageOutput, read_manifest
from tests.flows._pipeline import CELL_TASKS, run_flow, stage_folders, state_names, task_runs, tiny_config

SOLVERS = ["euler"]
STAGES = ("generate-dataset", "build-vector-field", "train", "evaluate", "integrate-trajectories", "render")


class Payload:
    """Unpickling this creates ``path``: proof that a record was executed, not read."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _pickle_record(marker: Path, key: str) -> bytes:
    """A record in Prefect's own format whose result is a pickled payload, as Prefect itself would write it."""
    metadata = ResultRecordMetadata(storage_key=key, serializer=PickleSerializer(picklelib="cloudpickle"))
    return ResultRecord(metadata=metadata, result=Payload(marker)).serialize()


@pytest.fixture(scope="module", autouse=True)
def code_versions_of_this_module() -> Iterator[None]:
    """Code versions read once: these tests are about the store, not about code edited while they run."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tasks.cache, "code_digest", functools.cache(tasks.cache.code_digest))
        yield


@pytest.fixture(scope="module")
def completed(prefect_server: ServerInfo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("attacks") / "artifacts"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(tasks.faults.ENV, raising=False)
        state = run_flow(prefect_server, tiny_config(root, solvers=SOLVERS))
    assert state.is_completed(), state.message
    return root


@pytest.fixture
def store(completed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(tasks.faults.ENV, raising=False)
    root = tmp_path / "artifacts"
    shutil.copytree(completed, root)
    return root


def _rerun(info: ServerInfo, root: Path) -> tuple[dict[str, str | None], dict]:
    """Rerun after an attack on one stage of the one cell: that cell's four stages are submitted (the dataset
    and field come whole from the cache, unsubmitted), and the report."""
    state = run_flow(info, tiny_config(root, solvers=SOLVERS))
    assert state.is_completed(), state.message
    runs = task_runs(info, state.state_details.flow_run_id, count=len(CELL_TASKS) + 1)
    return state_names(runs), state.result()


def test_pickled_records_planted_in_the_store_never_run(prefect_server: ServerInfo, store: Path,
                                                        tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    ResultRecord.deserialize(_pickle_record(marker, "probe"))  # the control: Prefect runs this payload
    assert marker.exists()
    marker.unlink()

    keys = {stage: next(iter(stage_folders(store, stage))) for stage in STAGES}
    for stage, key in keys.items():  # where the previous version kept its records, and beside each manifest
        for planted in (store / ".prefect-results" / key, store / stage / key / key):
            planted.parent.mkdir(parents=True, exist_ok=True)
            planted.write_bytes(_pickle_record(marker, key))
    evaluate = store / "evaluate" / keys["evaluate"]
    (evaluate / MANIFEST).write_bytes(_pickle_record(marker, keys["evaluate"]))  # a manifest replaced outright

    states, _ = _rerun(prefect_server, store)
    assert not marker.exists(), "a record planted in the artifacts store was executed"
    recomputed = {name for name, state in states.items() if state != "Cached"}
    assert recomputed == {"evaluate-euler@cpu", "report"}  # the replaced manifest: recomputed, never loaded
    assert read_manifest(evaluate, store) is not None


def test_forged_metrics_in_a_manifest_are_not_reported(prefect_server: ServerInfo, store: Path) -> None:
    (key,) = stage_folders(store, "evaluate")
    folder = store / "evaluate" / key
    manifest = json.loads((folder / MANIFEST).read_text())
    metrics = StageOutput.model_validate(manifest["output"]).path(store, "metrics")
    true_accuracy = json.loads(metrics.read_text())["test_accuracy"]
    manifest["output"]["data"]["test_accuracy"] = 0.123  # the files and their digests stay valid
    (folder / MANIFEST).write_text(json.dumps(manifest))

    states, summary = _rerun(prefect_server, store)
    assert states["evaluate-euler@cpu"] == "Completed"  # recomputed, not served from the forged manifest
    (row,) = summary["rows"]
    assert row["test_accuracy"] == true_accuracy != 0.123
    assert "0.123" not in (store / "report.md").read_text()


def test_a_cell_result_pointing_at_forged_outputs_is_refused(store: Path) -> None:
    from flows.cell_flow import SupersededOutput, UnverifiedOutput, read_cell_result
    from tasks.store import artifact_store

    summary = json.loads((store / "summary.json").read_text())
    cell = {name: StageOutput.model_validate(output) for name, output in summary["cells"][0].items()}
    result, artifacts = store / "cells" / "cell.json", artifact_store(store)
    result.parent.mkdir()
    result.write_text(json.dumps({name: output.model_dump(mode="json") for name, output in cell.items()}))
    assert read_cell_result("cells/cell.json", artifacts) == cell  # the control: a true result reads back

    forged = cell["metrics"].model_copy(update={"data": {**cell["metrics"].data, "test_accuracy": 0.123}})
    result.write_text(json.dumps({**{n: o.model_dump(mode="json") for n, o in cell.items()},
                                  "metrics": forged.model_dump(mode="json")}))
    assert read_cell_result("cells/cell.json", artifacts)["metrics"] == cell["metrics"]  # from the real manifest

    # Other files under the same key: another build's (a raced host's), or forged. Its later stages would not
    # belong with the manifest's, so the whole result is refused (the dispatch then runs the cell again).
    other_build = cell["trained"].model_copy(update={"digests": {n: "0" * 64 for n in cell["trained"].digests}})
    result.write_text(json.dumps({**{n: o.model_dump(mode="json") for n, o in cell.items()},
                                  "trained": other_build.model_dump(mode="json")}))
    with pytest.raises(SupersededOutput, match="another build of that key"):
        read_cell_result("cells/cell.json", artifacts)

    elsewhere = cell["metrics"].model_copy(update={"key": "0" * 24})
    result.write_text(json.dumps({"metrics": elsewhere.model_dump(mode="json")}))
    with pytest.raises(UnverifiedOutput, match="no verified manifest"):
        read_cell_result("cells/cell.json", artifacts)
