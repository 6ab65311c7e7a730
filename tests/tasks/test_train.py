"""Tests of tasks.train: digest-checked resume checkpoints, alone and inside the train stage on the session server."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from torch import nn

import tasks.cache
import tasks.faults
from flows.server import ServerInfo, prefect_settings_context
from nodecore.checkpoints import Checkpoint, load_checkpoint, load_weights, save_checkpoint
from nodecore.files import file_digest
from nodecore.training import EpochStats, History
from tasks.cache import StageContext, StageOutput
from tasks.config import PipelineConfig
from tasks.field import build_vector_field
from tasks.generate import generate_dataset
from tasks.slots import SLOT_DIR_ENV
from tasks.store import CACHE_ENV, ArtifactStore
from tasks.train import (RESUME, _write_resume_record, load_resume, restore_resume, resume_checkpoints, resume_files,
                         save_resume, share_resume, train_cell)
from tests.flows._pipeline import flow_settings, tiny_config

LOG = logging.getLogger("tests.resume")


def _flip(path: Path, count: int = 16) -> None:
    """Invert ``count`` bytes in the middle of ``path`` (inside the tensor data of a checkpoint)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + count] = bytes(b ^ 0xFF for b in data[middle:middle + count])
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# --- the resume store alone ----------------------------------------------------------------------------


def _save(folder: Path, *epochs: int) -> nn.Module:
    model = nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    for epoch in epochs:
        with torch.no_grad():
            model.weight.fill_(epoch)  # the checkpoint's epoch, readable from its weights
        history = History([EpochStats(e, 1.0, 0.5, 1, 1, 0.1) for e in range(epoch)])
        save_resume(folder, model, optimizer, config={"kind": "test"}, epoch=epoch, history=history, log=LOG)
    return model


def _recorded(folder: Path) -> list[int]:
    return [entry["epoch"] for entry in json.loads((folder / RESUME).read_text())["checkpoints"]]


def _by_epoch(folder: Path) -> dict[int, Path]:
    """The resume checkpoints in ``folder`` by the epoch their name gives (``resume-<epoch>[-<build>].pt``)."""
    return {int(path.name.split("-")[1].removesuffix(".pt")): path for path in folder.glob("resume-*.pt")}


def test_two_generations_are_kept_with_their_digests(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _save(tmp_path, 2, 4, 6)
    assert sorted(p.name for p in tmp_path.glob("resume-*.pt")) == ["resume-000004.pt", "resume-000006.pt"]
    assert _recorded(tmp_path) == [6, 4]
    checkpoint = load_resume(tmp_path, LOG)
    assert checkpoint is not None and checkpoint.epoch == 6 and checkpoint.history["epoch"] == list(range(6))
    assert not _warnings(caplog)


@pytest.mark.parametrize("damage", [_flip, _truncate, Path.unlink])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Any
) -> None:
    _save(tmp_path, 2, 4)
    damage(tmp_path / "resume-000004.pt")
    checkpoint = load_resume(tmp_path, LOG)
    assert checkpoint is not None and checkpoint.epoch == 2
    assert torch.equal(checkpoint.state_dict["weight"], torch.full((2, 2), 2.0))
    (warning,) = _warnings(caplog)
    assert str(tmp_path / "resume-000004.pt") in warning and "epoch 4" in warning
    assert ("missing" if damage is Path.unlink else "damaged") in warning
    assert not (tmp_path / "resume-000004.pt").exists() and _recorded(tmp_path) == [2]
    caplog.clear()
    assert load_resume(tmp_path, LOG).epoch == 2 and not _warnings(caplog)  # discarded once, not again


def test_no_good_checkpoint_means_starting_afresh(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _save(tmp_path, 2)
    _truncate(tmp_path / "resume-000002.pt")
    assert load_resume(tmp_path, LOG) is None
    assert "resume-000002.pt" in _warnings(caplog)[0]
    assert not list(tmp_path.glob("resume-*.pt")) and _recorded(tmp_path) == []


def test_a_checkpoint_written_but_not_recorded_is_discarded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A kill between writing the .pt and recording it: the file is untrusted, the recorded one is used."""
    _save(tmp_path, 2)
    record = (tmp_path / RESUME).read_bytes()
    _save(tmp_path, 4)
    (tmp_path / RESUME).write_bytes(record)  # as if killed before the record was replaced
    assert load_resume(tmp_path, LOG).epoch == 2
    (warning,) = _warnings(caplog)
    assert "resume-000004.pt" in warning and f"not recorded in {RESUME}" in warning
    assert not (tmp_path / "resume-000004.pt").exists()


@pytest.mark.parametrize("newest_fits", [True, False])
def test_what_another_build_records_while_a_resume_is_tried_is_kept(tmp_path: Path, newest_fits: bool) -> None:
    """A superseded run of the same key may record a checkpoint while this build tries its own: the record that
    load_resume rewrites (after discarding a checkpoint that does not fit) still lists it, and without a discard
    the record is not rewritten at all."""
    _save(tmp_path, 2, 4)
    other = "b" * 16

    def apply(checkpoint: Checkpoint) -> None:
        if checkpoint.epoch == 4:  # the other build records its checkpoint while this one is being tried
            save_resume(tmp_path, nn.Linear(2, 2), torch.optim.Adam(nn.Linear(2, 2).parameters()),
                        config={"kind": "test"}, epoch=3, history=History([]), log=LOG, attempt=other)
            if not newest_fits:
                raise ValueError("the weights do not fit")

    chosen = load_resume(tmp_path, LOG, apply=apply)
    assert chosen is not None and chosen.epoch == (4 if newest_fits else 2)
    assert _recorded(tmp_path) == ([4, 3, 2] if newest_fits else [3, 2])
    assert (tmp_path / f"resume-000003-{other}.pt").is_file()


@pytest.mark.parametrize("record", [b"{not json", b'{"checkpoints": [{"file": "../../etc/x", "epoch": 2, '
                                                b'"sha256": "00"}]}', None])
def test_an_unreadable_or_missing_record_trusts_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, record: bytes | None
) -> None:
    _save(tmp_path, 2)
    if record is None:
        (tmp_path / RESUME).unlink()
    else:
        (tmp_path / RESUME).write_bytes(record)
    assert load_resume(tmp_path, LOG) is None
    warnings = _warnings(caplog)
    assert any("resume-000002.pt" in w and "not recorded" in w for w in warnings), warnings
    assert not list(tmp_path.glob("resume-*.pt"))


def _forge(folder: Path, model: nn.Module) -> None:
    """What a writer to a shared store could plant: its own weights, with a digest that matches them."""
    with torch.no_grad():
        model.weight.fill_(99.0)
    save_checkpoint(folder / "resume-000008.pt", model, config={"kind": "test"}, epoch=8)
    record = json.loads((folder / RESUME).read_text())
    record["checkpoints"].insert(0, {"file": "resume-000008.pt", "epoch": 8,
                                     "sha256": file_digest(folder / "resume-000008.pt")})
    (folder / RESUME).write_text(json.dumps(record))  # the old signature, which no longer covers the entries


def test_a_forged_or_moved_resume_record_is_not_resumed_from(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / ("a" * 24)
    folder.mkdir()
    _forge(folder, _save(folder, 2))
    assert load_resume(folder, LOG) is None  # neither the planted checkpoint nor anything the record lists
    assert any("not signed" in w for w in _warnings(caplog)), _warnings(caplog)

    elsewhere = tmp_path / ("b" * 24)
    elsewhere.mkdir()
    _save(folder, 2)
    for path in folder.iterdir():  # a true record of another stage folder, copied in
        (elsewhere / path.name).write_bytes(path.read_bytes())
    assert load_resume(folder, LOG).epoch == 2 and load_resume(elsewhere, LOG) is None


# --- resume checkpoints in an object store (S3) -------------------------------------------------------


def _context(store: ArtifactStore) -> StageContext:
    key_folder = store.local_root / "train" / ("c" * 24)
    return StageContext(key_folder / "build-0123456789abcdef", store.local_root, key_folder, store)


def test_the_bucket_keeps_only_the_recorded_generations_and_a_retry_fetches_only_the_newest(
        s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    name = f"nodecore-{uuid.uuid4().hex[:12]}"
    ArtifactStore(f"s3://{name}").fs.mkdir(name)
    location = f"s3://{name}/grid"

    def host(label: str) -> StageContext:
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / label))
        return _context(ArtifactStore(location))

    trainer = host("host-a")
    model, optimizer = nn.Linear(2, 2), None
    for epoch in (2, 4, 6, 8):
        with torch.no_grad():
            model.weight.fill_(epoch)
        optimizer = optimizer or torch.optim.Adam(model.parameters())
        saved = save_resume(trainer.key_folder, model, optimizer, config={"kind": "test"}, epoch=epoch,
                            history=History(), log=LOG)
        share_resume(trainer, saved, LOG)
    in_bucket = sorted(p.name for p in trainer.shared())
    assert in_bucket == ["resume-000006.pt", "resume-000008.pt", RESUME]  # no stale generation stays behind

    retry = host("host-b")  # a retry on another host: only the record and the newest checkpoint are downloaded
    restore_resume(retry, LOG)
    assert sorted(p.name for p in retry.key_folder.iterdir()) == [RESUME]
    assert load_resume(retry.key_folder, LOG, fetch=retry.restore).epoch == 8
    assert sorted(p.name for p in retry.key_folder.iterdir()) == ["resume-000008.pt", RESUME]

    store = trainer.store
    store.fs.pipe_file(f"{store.base}/train/{'c' * 24}/resume-000008.pt", b"damaged in the bucket")
    fallback = host("host-c")  # the newest no longer matches its record: the one before it is fetched instead
    restore_resume(fallback, LOG)
    checkpoint = load_resume(fallback.key_folder, LOG, fetch=fallback.restore)
    assert sorted(p.name for p in fallback.key_folder.iterdir()) == ["resume-000006.pt", RESUME]
    assert any("resume-000008.pt (epoch 8)" in w for w in _warnings(caplog)), _warnings(caplog)
    assert checkpoint.epoch == 6 and torch.equal(checkpoint.state_dict["weight"], torch.full((2, 2), 6.0))


def test_a_retry_on_the_same_host_keeps_its_newer_record_over_an_older_or_unsigned_one_in_the_bucket(
        s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The last record upload failed (the bucket says epoch 2, this host trained to 4), or the bucket's record
    was planted: the retry keeps this host's record and checkpoints instead of discarding them."""
    name = f"nodecore-{uuid.uuid4().hex[:12]}"
    ArtifactStore(f"s3://{name}").fs.mkdir(name)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "host-a"))
    ctx = _context(ArtifactStore(f"s3://{name}/grid"))
    model, optimizer = nn.Linear(2, 2), None
    for epoch in (2, 4):
        optimizer = optimizer or torch.optim.Adam(model.parameters())
        saved = save_resume(ctx.key_folder, model, optimizer, config={"kind": "test"}, epoch=epoch,
                            history=History(), log=LOG)
        if epoch == 2:
            share_resume(ctx, saved, LOG)  # epoch 4's upload never happens
    restore_resume(ctx, LOG)
    assert load_resume(ctx.key_folder, LOG).epoch == 4
    assert any("keeping this host's resume record (epoch 4): the store's is older (epoch 2)" in w
               for w in _warnings(caplog)), _warnings(caplog)

    store = ctx.store
    store.fs.pipe_file(f"{store.base}/train/{'c' * 24}/{RESUME}", b'{"checkpoints": [], "signature": "forged"}')
    restore_resume(ctx, LOG)
    assert load_resume(ctx.key_folder, LOG).epoch == 4


def _bucket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """A fresh bucket; ``host(label)`` is its store as seen from a host with its own, empty working copy."""
    name = f"nodecore-{uuid.uuid4().hex[:12]}"
    ArtifactStore(f"s3://{name}").fs.mkdir(name)

    def host(label: str) -> ArtifactStore:
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / label))
        return ArtifactStore(f"s3://{name}/grid")

    return host


class _Builder:
    """One build of the key ``c``*24 through the steps :func:`train_cell` takes around its training."""

    def __init__(self, ctx: StageContext, attempt: str, offset: float = 0.0) -> None:
        self.ctx, self.attempt, self.offset = ctx, attempt, offset
        self.model = nn.Linear(2, 2)
        self.optimizer = torch.optim.Adam(self.model.parameters())
        self.seen: set[str] = set()

    def name(self, epoch: int) -> str:
        return f"resume-{epoch:06d}-{self.attempt}.pt"

    def start(self) -> Checkpoint | None:
        restore_resume(self.ctx, LOG)
        self.seen = resume_checkpoints(self.ctx)
        return load_resume(self.ctx.key_folder, LOG, fetch=self.ctx.restore,
                           apply=lambda checkpoint: load_weights(self.model, checkpoint.state_dict, source="test"))

    def save(self, epoch: int) -> None:
        with torch.no_grad():
            self.model.weight.fill_(epoch + self.offset)  # whose checkpoint of which epoch, readable from it
        saved = save_resume(self.ctx.key_folder, self.model, self.optimizer, config={"kind": "test"}, epoch=epoch,
                            history=History(), log=LOG, attempt=self.attempt)
        share_resume(self.ctx, saved, LOG, attempt=self.attempt)

    def finish(self) -> None:
        """What happens once the build's manifest is in the store (``tasks.cache._settle``)."""
        self.ctx.unshare(*resume_files(self.ctx, attempt=self.attempt, seen=self.seen))


def _context_of(store: ArtifactStore, attempt: str) -> StageContext:
    key_folder = store.local_root / "train" / ("c" * 24)
    return StageContext(key_folder / f"build-{attempt}", store.local_root, key_folder, store)


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _unfit(data: bytes) -> bytes:
    """The same checkpoint with every weight one row longer: it loads, but into no model of its config."""
    payload = torch.load(io.BytesIO(data), weights_only=True)
    payload["state_dict"] = {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in payload["state_dict"].items()}
    out = io.BytesIO()
    torch.save(payload, out)
    return out.getvalue()


def make_newest_unloadable(store: ArtifactStore, key_folder: str, damage: Any) -> dict[str, Any]:
    """Replace the newest checkpoint the store's record of ``key_folder`` lists by ``damage(its bytes)`` and record
    the new bytes' digest (signed with the hosts' key): it then passes its digest check but does not load."""
    scratch = Path(store.local_root).parent / "forger" / Path(key_folder).name  # the signature covers its name
    scratch.mkdir(parents=True)
    entries = json.loads(store.read_bytes(f"{key_folder}/{RESUME}"))["checkpoints"]
    newest = entries[0]
    data = damage(store.read_bytes(f"{key_folder}/{newest['file']}"))
    store.write_bytes(f"{key_folder}/{newest['file']}", data)
    newest["sha256"] = hashlib.sha256(data).hexdigest()
    _write_resume_record(scratch, entries)
    store.write_bytes(f"{key_folder}/{RESUME}", (scratch / RESUME).read_bytes())
    return newest


@pytest.mark.parametrize("damage", [_truncated, _unfit])
def test_an_unloadable_newest_checkpoint_makes_a_fresh_host_fetch_and_resume_from_the_older_one(
        s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        damage: Any) -> None:
    """The newest passes its digest check but does not load (cut, or weights of another shape): the one before
    it, which the retry had not downloaded, is fetched then and resumed from, weights and all."""
    host = _bucket(monkeypatch, tmp_path)
    trainer = _Builder(_context_of(host("host-a"), "a" * 16), "a" * 16)
    trainer.start()
    trainer.save(2)
    trainer.save(4)
    newest = make_newest_unloadable(trainer.ctx.store, f"train/{'c' * 24}", damage)

    caplog.clear()
    caplog.set_level(logging.INFO)
    retry = _Builder(_context_of(host("host-b"), "b" * 16), "b" * 16)
    checkpoint = retry.start()
    assert checkpoint is not None and checkpoint.epoch == 2  # not 0
    assert torch.equal(retry.model.weight, torch.full((2, 2), 2.0))  # the older checkpoint's weights exactly
    assert all(torch.equal(retry.model.state_dict()[k], v) for k, v in checkpoint.state_dict.items())
    assert sorted(p.name for p in retry.ctx.key_folder.iterdir()) == [trainer.name(2), RESUME]
    (warning,) = _warnings(caplog)
    assert f"{newest['file']} (epoch 4)" in warning
    assert ("not a readable nodecore checkpoint" if damage is _truncated else "do not fit") in warning
    used = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resuming from")]
    assert len(used) == 1 and f"{trainer.name(2)} (epoch 2), the newest that loads; skipped {newest['file']}" in used[0]


@pytest.mark.parametrize("where", ["s3", "local"])
def test_two_builds_of_one_key_at_once_never_delete_each_others_progress(
        s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """A timed-out build (A) still runs while its cell is re-dispatched (B): interleaved saves and A's cleanup
    after its manifest leave B's checkpoints loadable, and a third build resumes from the newest of either."""
    if where == "s3":
        host = _bucket(monkeypatch, tmp_path)
    else:
        local = ArtifactStore(str(tmp_path / "artifacts"))  # one folder that every build shares
        host = lambda label: local  # noqa: E731
    a = _Builder(_context_of(host("host-a"), "a" * 16), "a" * 16)
    b = _Builder(_context_of(host("host-b"), "b" * 16), "b" * 16, offset=0.5)

    def stored() -> list[str]:  # what the store holds (for a local store: the shared folder)
        return sorted(p.name for p in b.ctx.shared())

    def retry(label: str) -> tuple[int, float]:
        build = _Builder(_context_of(host(label), label[-1] * 16), label[-1] * 16)
        checkpoint = build.start()
        assert checkpoint is not None
        return checkpoint.epoch, float(build.model.weight.detach()[0, 0])

    assert a.start() is None
    a.save(2)
    a.save(4)
    assert b.start().epoch == 4 and torch.equal(b.model.weight, torch.full((2, 2), 4.0))  # A's progress
    b.save(6)
    a.save(6)  # A saves on after B took over: it deletes only its own superseded checkpoints
    a.save(8)
    assert stored() == sorted([a.name(6), a.name(8), b.name(6), RESUME])
    assert retry("host-c") == (8, 8.0)  # the newest of either: A's

    a.finish()  # A's manifest is in the store; B saved since A started, so B may still be running
    assert stored() == sorted([b.name(6), RESUME])
    assert retry("host-d") == (6, 6.5)  # B's newest, still loadable

    b.save(8)
    b.finish()  # A's checkpoints were there when B started and A has saved none since: all go
    assert stored() == []
    assert not [p.name for p in b.ctx.key_folder.iterdir() if p.name.startswith("resume")]


def test_the_old_single_record_still_resumes_and_is_cleaned_up(tmp_path: Path) -> None:
    """``resume-<epoch>.pt`` and a record written by one build at a time (the earlier layout)."""
    store = ArtifactStore(str(tmp_path / "artifacts"))
    build = _Builder(_context_of(store, "d" * 16), "d" * 16)
    _save(build.ctx.key_folder, 2, 4)
    assert sorted(p.name for p in build.ctx.key_folder.glob("resume-*.pt")) == ["resume-000002.pt", "resume-000004.pt"]
    assert build.start().epoch == 4 and torch.equal(build.model.weight, torch.full((2, 2), 4.0))
    build.save(6)
    assert _recorded(build.ctx.key_folder) == [6, 4, 2]
    build.finish()
    assert not list(build.ctx.key_folder.iterdir())


# --- inside the train stage ----------------------------------------------------------------------------

EPOCHS = ("--training.epochs", "6", "--training.checkpoint_every", "2")


@flow(name="nodecore-test-train-cell")
def _train_flow(config: PipelineConfig) -> StageOutput:
    root = {"root": str(Path(config.run.artifacts_dir).resolve())}
    dataset = generate_dataset(dataset=config.dataset, **root)
    field = build_vector_field(dataset=dataset, model=config.model, **root)
    return train_cell.with_options(retries=0)(
        dataset=dataset, field=field, model=config.model, solver="euler", solver_config=config.solver,
        training=config.training, device="cpu", **root)


def _train(info: ServerInfo, root: Path) -> Any:
    """Train the tiny euler@cpu cell under ``root`` (its own Prefect result storage); return the final state."""
    with flow_settings(info, root.parent / f"{root.name}-prefect-storage"):
        return _train_flow(tiny_config(root, *EPOCHS), return_state=True)


def _weights(root: Path, output: StageOutput) -> dict[str, torch.Tensor]:
    return load_checkpoint(output.path(root, "checkpoint")).state_dict


@pytest.fixture(autouse=True)
def private_slots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SLOT_DIR_ENV, str(tmp_path / "slots"))
    monkeypatch.setattr(tasks.faults, "_attempts", type(tasks.faults._attempts)())


@pytest.fixture(scope="module")
def clean(prefect_server: ServerInfo, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StageOutput]:
    """The cell trained once without interruption: the weights every resumed training must end with."""
    root = tmp_path_factory.mktemp("clean") / "artifacts"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(tasks.faults.ENV, raising=False)
        patch.setenv(SLOT_DIR_ENV, str(root.parent / "slots"))
        state = _train(prefect_server, root)
    assert state.is_completed(), state.message
    output = state.result()
    assert output.data["resumed_from_epoch"] == 0 and output.data["queue_seconds"] >= 0
    with prefect_settings_context(prefect_server), get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    (progress,) = [a for a in artifacts if a.type == "progress"]
    assert progress.data == 100.0
    assert re.fullmatch(r"training euler@cpu: epochs completed, percent \(queued \d+\.\d s for device slot 1 of \d+\)",
                        progress.description), progress.description  # the queue time, shown in the UI
    return root, output


def _failed_after_checkpoints(info: ServerInfo, root: Path, monkeypatch: pytest.MonkeyPatch,
                              faults: int) -> Path:
    """Fail the first ``faults`` trainings of the cell, each right after writing a resume checkpoint."""
    monkeypatch.setenv(tasks.faults.ENV, f"train:transient:{faults}")
    for _ in range(faults):
        state = _train(info, root)
        assert state.is_failed() and "injected transient failure" in state.message, state.message
    (folder,) = (root / "train").iterdir()
    return folder


@pytest.mark.parametrize("damage", [_flip, _truncate])
def test_a_damaged_resume_checkpoint_is_discarded_and_training_restarts(
    prefect_server: ServerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    clean: tuple[Path, StageOutput], damage: Any,
) -> None:
    """The issue's case: the only resume checkpoint is damaged after the failure (16 flipped bytes, or cut)."""
    root = tmp_path / "artifacts"
    folder = _failed_after_checkpoints(prefect_server, root, monkeypatch, faults=1)
    (only,) = _by_epoch(folder).values()
    assert only.name.startswith("resume-000002-") and (folder / RESUME).is_file()
    damage(only)

    state = _train(prefect_server, root)  # the fault fired once: this attempt passes
    assert state.is_completed(), state.message  # a truncated checkpoint is no permanent error any more
    output = state.result()
    assert output.data["resumed_from_epoch"] == 0
    assert any(str(only) in w and "damaged" in w for w in _warnings(caplog)), _warnings(caplog)
    clean_root, clean_output = clean
    for name, tensor in _weights(clean_root, clean_output).items():
        torch.testing.assert_close(_weights(root, output)[name], tensor, rtol=0, atol=0)
    assert not list(folder.glob("resume*"))  # cleaned up once trained


def test_a_damaged_newest_checkpoint_resumes_from_the_previous_one(
    prefect_server: ServerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    clean: tuple[Path, StageOutput],
) -> None:
    root = tmp_path / "artifacts"
    folder = _failed_after_checkpoints(prefect_server, root, monkeypatch, faults=2)  # at epoch 2, then at 4
    checkpoints = _by_epoch(folder)
    assert sorted(checkpoints) == [2, 4] and _recorded(folder) == [4, 2]  # one from each failed build
    _flip(checkpoints[4])

    state = _train(prefect_server, root)
    assert state.is_completed(), state.message
    output = state.result()
    assert output.data["resumed_from_epoch"] == 2
    assert any(checkpoints[4].name in w and "damaged" in w for w in _warnings(caplog)), _warnings(caplog)
    assert json.loads(output.path(root, "history").read_text())["epoch"] == list(range(6))
    clean_root, clean_output = clean
    for name, tensor in _weights(clean_root, clean_output).items():
        torch.testing.assert_close(_weights(root, output)[name], tensor, rtol=1e-6, atol=1e-7)


def test_a_training_killed_before_its_manifest_is_in_the_store_resumes_instead_of_retraining(
    prefect_server: ServerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean: tuple[Path, StageOutput],
) -> None:
    """Killed after training, before the manifest is written: the resume checkpoints are still there."""
    root = tmp_path / "artifacts"
    write_manifest = tasks.cache._write_manifest

    def killed(store: Any, stage: str, key: str, built: Any) -> StageOutput:
        if stage == "train":
            raise RuntimeError("killed before the manifest was written")
        return write_manifest(store, stage, key, built)

    monkeypatch.setattr(tasks.cache, "_write_manifest", killed)
    state = _train(prefect_server, root)
    assert state.is_failed() and "killed before the manifest" in state.message, state.message
    (folder,) = (root / "train").iterdir()
    assert _recorded(folder) == [4, 2]  # 6 epochs, a checkpoint every 2: nothing was cleaned up yet

    monkeypatch.setattr(tasks.cache, "_write_manifest", write_manifest)
    state = _train(prefect_server, root)
    assert state.is_completed(), state.message
    output = state.result()
    assert output.data["resumed_from_epoch"] == 4  # not retrained from epoch 0
    clean_root, clean_output = clean
    for name, tensor in _weights(clean_root, clean_output).items():
        torch.testing.assert_close(_weights(root, output)[name], tensor, rtol=1e-6, atol=1e-7)
    assert not list(folder.glob("resume*"))  # deleted once the manifest was in the store


def test_a_training_killed_right_after_its_manifest_is_not_retrained(
    prefect_server: ServerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Killed between the manifest and the cleanup of the resume checkpoints: the rerun takes it from the cache."""
    root = tmp_path / "artifacts"
    settle = tasks.cache._settle

    def killed(store: Any, context: Any, output: StageOutput, built: Any) -> None:
        if output.stage == "train":
            raise RuntimeError("killed after the manifest was written")
        settle(store, context, output, built)

    monkeypatch.setattr(tasks.cache, "_settle", killed)
    state = _train(prefect_server, root)
    assert state.is_failed() and "killed after the manifest" in state.message, state.message
    (folder,) = (root / "train").iterdir()
    assert _recorded(folder) == [4, 2]  # the resume checkpoints were left (deleted only after the manifest)

    monkeypatch.setattr(tasks.cache, "_settle", settle)
    state = _train(prefect_server, root)
    assert state.is_completed(), state.message
    assert state.result().reused  # from its manifest: not trained again


def test_the_cell_optimizer_is_built_only_when_needed_and_carries_its_state_either_way() -> None:
    """A training in a stage worker never builds the task's Adam (torch._dynamo's import is 1.1 s): the state only
    passes through; built later (a training in place, a resume), it takes the state it was given."""
    from tasks.train import CellOptimizer

    model = nn.Linear(2, 2)
    optimizer = CellOptimizer(model.parameters, lr=0.1)
    assert optimizer.state_dict() is None  # fresh: a worker starts its own fresh Adam
    stepped = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(1, 2)).sum().backward()
    stepped.step()
    optimizer.load_state_dict(stepped.state_dict())  # what a worker hands back
    assert optimizer.state_dict() == stepped.state_dict()  # kept as it is, unbuilt
    built = optimizer.built()
    assert isinstance(built, torch.optim.Adam) and optimizer.built() is built
    assert torch.equal(built.state_dict()["state"][0]["exp_avg"], stepped.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(ValueError):  # a built one checks what it loads, as torch does
        optimizer.load_state_dict(torch.optim.Adam([nn.Parameter(torch.ones(1))]).state_dict())
    optimizer.reset()
    assert optimizer.state_dict() is None and not optimizer.built().state_dict()["state"]


def test_a_store_that_fails_mid_resume_still_leaves_the_discarded_file_out_of_the_record(tmp_path: Path) -> None:
    """The newest checkpoint is discarded, then fetching the one before fails (the store stops answering): the
    error propagates, and the record no longer lists the deleted file."""
    _save(tmp_path, 2, 4)
    _flip(tmp_path / "resume-000004.pt")

    def fetch(file: str, sha256: str) -> None:
        if file == "resume-000002.pt":
            raise ConnectionError("the store does not answer")

    with pytest.raises(ConnectionError):
        load_resume(tmp_path, LOG, fetch=fetch)
    assert _recorded(tmp_path) == [2] and not (tmp_path / "resume-000004.pt").exists()


@pytest.mark.parametrize(("every_seconds", "updates"), [(0.0, 1 + 6 + 1), (3600.0, 1 + 1)])
def test_the_progress_artifact_is_updated_at_logged_epochs_at_most_once_a_period(
        prefect_server: ServerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, every_seconds: float,
        updates: int) -> None:
    """Each update is an API call the server pays for: at most one per ``PROGRESS_SECONDS``, besides the queue time
    shown when the slot is taken and the 100 % at the end."""
    import tasks.train

    shown: list[float] = []
    update = tasks.train.update_progress_artifact
    monkeypatch.setattr(tasks.train, "PROGRESS_SECONDS", every_seconds)
    monkeypatch.setattr(tasks.train, "update_progress_artifact",
                        lambda artifact_id, progress, **kw: shown.append(progress) or update(artifact_id, progress, **kw))
    root = tmp_path / "artifacts"
    with flow_settings(prefect_server, tmp_path / "prefect-storage"):
        _train_flow(tiny_config(root, *EPOCHS, "--training.log_every", "1"))
    assert len(shown) == updates and shown[-1] == 100.0, shown
