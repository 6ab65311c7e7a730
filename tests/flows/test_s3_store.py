"""The whole pipeline with its artifacts in S3 (moto's server on loopback, through s3fs).

One tiny run writes every stage into a bucket; a rerun that has only the bucket (an empty local working
copy, as on another host) takes every stage from the bucket; a training that fails once resumes from the checkpoint it
uploaded to the bucket.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

import tasks.faults
from flows.server import ServerInfo, prefect_settings_context
from tasks.cache import MANIFEST, StageOutput
from tasks.store import CACHE_ENV, ArtifactStore
from tests.flows._pipeline import expected_task_labels, flow_settings, state_names, task_runs, tiny_config
from tests.flows.test_s3_links import LINK, download

SOLVERS = ["euler"]
STAGES = ("generate-dataset", "build-vector-field", "train", "evaluate", "integrate-trajectories", "render")


def _run(info: ServerInfo, location: str, storage: Path, *, count: int = len(expected_task_labels(SOLVERS))):
    from flows.train_flow import train_flow

    with flow_settings(info, storage):
        state = train_flow(tiny_config(location, solvers=SOLVERS), return_state=True)
    assert state.is_completed(), state.message
    runs = task_runs(info, state.state_details.flow_run_id, count=count)
    return state, runs


@pytest.fixture
def bucket(s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv(tasks.faults.ENV, raising=False)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "host-a"))
    name = f"nodecore-{uuid.uuid4().hex[:12]}"
    ArtifactStore(f"s3://{name}").fs.mkdir(name)
    return f"s3://{name}/grid"


def test_a_run_on_s3_lands_in_the_bucket_and_reruns_cached_from_it(
        prefect_server: ServerInfo, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state, runs = _run(prefect_server, bucket, tmp_path / "prefect-storage")
    store = ArtifactStore(bucket)
    store.fs.invalidate_cache()
    keys = {path[len(store.base) + 1:] for path in store.fs.find(store.base)}
    for stage in STAGES:  # every stage's manifest is in the bucket, beside its files
        assert any(k.startswith(f"{stage}/") and k.endswith(f"/{MANIFEST}") for k in keys), (stage, sorted(keys))
    assert {"report.md", "summary.json", "reports/LATEST"} <= keys
    assert not any(".partial-" in k or "resume" in k or k.startswith("cells/") for k in keys), sorted(keys)
    summary = json.loads(store.read_bytes("summary.json"))
    assert state.result()["report"].startswith(f"{bucket}/reports/")  # the console names the store's URL
    with prefect_settings_context(prefect_server), get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    links = {a.key: a.data for a in artifacts if a.key and a.type == "markdown" and "checkpoint" in a.key}
    assert links and all(f"[{bucket}/train/" in data for data in links.values()), links  # text: the store URL
    links["nodecore-report-file"] = next(a.data for a in artifacts if a.key == "nodecore-report-file")
    for key, data in links.items():  # presigned URLs: a browser, with no credentials, gets the files' bytes
        found = LINK.findall(data)
        assert found and all("X-Amz-Signature=" in target and download(target) == store.read_bytes(
            text[len(bucket) + 1:]) for text, target in found), (key, data)

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "host-b"))  # a host with nothing local: only the bucket
    # Every stage verifies from the bucket (fetched into the empty working copy): nothing is even submitted.
    again, reruns = _run(prefect_server, bucket, tmp_path / "prefect-storage-b", count=1)
    assert state_names(reruns) == {"report": "Completed"}
    assert {row["cached"] for row in again.result()["rows"]} == {"all"}
    rerun_summary = json.loads(store.read_bytes("summary.json"))
    assert rerun_summary["flow_run_id"] == str(again.state_details.flow_run_id)
    assert [row["test_accuracy"] for row in rerun_summary["rows"]] == [row["test_accuracy"] for row in summary["rows"]]
    assert (tmp_path / "host-b").is_dir()  # the report's plots were fetched there, verified


def test_a_failed_training_resumes_from_the_checkpoint_in_the_bucket(
        prefect_server: ServerInfo, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tasks.faults.ENV, "train:transient:1")
    state, runs = _run(prefect_server, bucket, tmp_path / "prefect-storage")
    assert runs["train-euler@cpu"].run_count == 2
    (cell,) = json.loads(ArtifactStore(bucket).read_bytes("summary.json"))["cells"]
    trained = StageOutput.model_validate(cell["trained"])
    assert trained.data["resumed_from_epoch"] == 2  # the checkpoint the first attempt shared


def test_shared_files_survive_the_loss_of_the_working_copy(s3_server: str, bucket: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """What lets another host resume: :meth:`StageContext.share` uploads, :meth:`restore` brings them back."""
    import hashlib

    from tasks.cache import StageContext

    def context(store: ArtifactStore) -> StageContext:
        key_folder = store.local_root / "train" / ("f" * 24)
        return StageContext(key_folder / "build-0123456789abcdef", store.local_root, key_folder, store)

    store = ArtifactStore(bucket)
    folder = context(store).key_folder
    folder.mkdir(parents=True)
    (folder / "resume-000002.pt").write_bytes(b"weights")
    (folder / "resume.json").write_text("{}")
    context(store).share(folder / "resume-000002.pt", folder / "resume.json")

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "host-b"))
    other = context(ArtifactStore(bucket))
    assert other.restore("resume-000002.pt", hashlib.sha256(b"other").hexdigest()) is None  # verified: no match
    assert not (other.key_folder / "resume-000002.pt").exists()
    assert other.restore("resume-000002.pt", hashlib.sha256(b"weights").hexdigest()).read_bytes() == b"weights"
    assert other.restore("resume.json").read_text() == "{}" and other.restore("resume-000004.pt") is None
    assert sorted(p.name for p in other.shared()) == ["resume-000002.pt", "resume.json"]
    other.unshare(*other.shared())
    assert other.shared() == [] and not (other.key_folder / "resume.json").exists()
