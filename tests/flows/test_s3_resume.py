"""A retried training on a fresh host resumes from the bucket when the newest resume checkpoint there is unusable.

The bucket holds two generations (one from each of two failed attempts); the newest passes its digest check but
does not load. The retry, whose working copy is empty, must fetch the older one then and resume from it.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from prefect import flow

import tasks.faults
import tasks.train
from flows.server import ServerInfo
from nodecore.checkpoints import load_checkpoint
from tasks.cache import StageOutput
from tasks.config import PipelineConfig
from tasks.field import build_vector_field
from tasks.generate import generate_dataset
from tasks.slots import SLOT_DIR_ENV
from tasks.store import CACHE_ENV, ArtifactStore
from tasks.train import RESUME, train_cell
from tests.flows._pipeline import flow_settings, tiny_config
from tests.tasks.test_train import _truncated, _unfit, make_newest_unloadable

EPOCHS = ("--training.epochs", "6", "--training.checkpoint_every", "2")


@flow(name="nodecore-test-s3-resume")
def _train_flow(config: PipelineConfig) -> StageOutput:
    root = {"root": str(config.run.artifacts_dir)}
    dataset = generate_dataset(dataset=config.dataset, **root)
    field = build_vector_field(dataset=dataset, model=config.model, **root)
    return train_cell.with_options(retries=0)(
        dataset=dataset, field=field, model=config.model, solver="euler", solver_config=config.solver,
        training=config.training, device="cpu", **root)


@pytest.mark.parametrize("damage", [_truncated, _unfit])
def test_an_unloadable_newest_checkpoint_in_the_bucket_resumes_a_fresh_host_from_the_older_one(
        prefect_server: ServerInfo, s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        damage: Any) -> None:
    name = f"nodecore-{uuid.uuid4().hex[:12]}"
    ArtifactStore(f"s3://{name}").fs.mkdir(name)
    location = f"s3://{name}/grid"
    config = tiny_config(location, *EPOCHS, solvers=["euler"])
    monkeypatch.setenv(SLOT_DIR_ENV, str(tmp_path / "slots"))
    monkeypatch.setattr(tasks.faults, "_attempts", type(tasks.faults._attempts)())

    def run(host: str) -> Any:
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / host))
        with flow_settings(prefect_server, tmp_path / f"{host}-prefect-storage"):
            return _train_flow(config, return_state=True)

    monkeypatch.setenv(tasks.faults.ENV, "train:transient:2")  # fails right after the checkpoint of epoch 2, then 4
    for host in ("host-a", "host-b"):
        state = run(host)
        assert state.is_failed() and "injected transient failure" in state.message, state.message
    monkeypatch.delenv(tasks.faults.ENV)

    store = ArtifactStore(location)
    store.fs.invalidate_cache()
    (record,) = [p for p in store.fs.find(f"{store.base}/train") if p.endswith(f"/{RESUME}")]
    key_folder = record[len(store.base) + 1:].rsplit("/", 1)[0]
    entries = json.loads(store.read_bytes(f"{key_folder}/{RESUME}"))["checkpoints"]
    assert [e["epoch"] for e in entries] == [4, 2]  # the two generations, one from each failed attempt
    older = tmp_path / "older.pt"
    older.write_bytes(store.read_bytes(f"{key_folder}/{entries[1]['file']}"))
    expected = load_checkpoint(older).state_dict
    make_newest_unloadable(store, key_folder, damage)

    started: dict[str, Any] = {}
    train = tasks.train.train

    def observed(model: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        started.update(epoch=kwargs["start_epoch"], weights={k: v.detach().cpu().clone()
                                                             for k, v in model.state_dict().items()})
        return train(model, *args, **kwargs)

    monkeypatch.setattr(tasks.train, "train", observed)
    state = run("host-c")  # a fresh working copy: only the bucket
    assert state.is_completed(), state.message
    output = state.result()
    assert output.data["resumed_from_epoch"] == 2 and started["epoch"] == 2  # not 0
    assert started["weights"].keys() == expected.keys()
    for key, tensor in expected.items():  # exactly the older checkpoint's weights
        assert torch.equal(started["weights"][key], tensor), key
    store.fs.invalidate_cache()
    left = [p for p in store.fs.find(f"{store.base}/{key_folder}") if "/resume" in p]
    assert left == []  # the manifest is in the bucket: the failed attempts' checkpoints and the record are gone
