"""Unit tests of tasks.cache: stage keys, manifests, and the stage body's cache check (no Prefect server)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

import tasks.cache

from tasks.config import DatasetConfig, ModelConfig
from tasks.cache import (
    MANIFEST,
    ArtifactCachePolicy,
    Built,
    StageContext,
    StageOutput,
    read_manifest,
    stage_key,
    stage_task,
)

CODE = "a" * 64


def _upstream(digest: str = "d1") -> StageOutput:
    return StageOutput(stage="generate-dataset", key="k" * 24, files={"train": "generate-dataset/k/train.parquet"},
                       digests={"train": digest}, data={"dim": 2})


def _inputs(**changes: object) -> dict[str, object]:
    inputs: dict[str, object] = {"root": "/tmp/a", "refresh": False, "dataset": _upstream(),
                                 "model": ModelConfig(), "solver": "rk4"}
    return inputs | changes


# --- stage_key -----------------------------------------------------------------------------------------


def test_same_inputs_give_the_same_key() -> None:
    key = stage_key("train", CODE, _inputs())
    assert key == stage_key("train", CODE, _inputs())
    assert key == stage_key("train", CODE, _inputs(model=ModelConfig(hidden=16)))  # equal config, new object
    assert len(key) == 24 and int(key, 16) >= 0


def test_key_ignores_where_the_artifacts_live_and_refresh() -> None:
    key = stage_key("train", CODE, _inputs())
    assert stage_key("train", CODE, _inputs(root="/elsewhere", refresh=True)) == key
    assert stage_key("train", CODE, {k: v for k, v in _inputs().items() if k not in ("root", "refresh")}) == key


@pytest.mark.parametrize(
    "change",
    [
        {"model": ModelConfig(hidden=17)},
        {"model": ModelConfig(init_seed=1)},
        {"solver": "euler"},
        {"dataset": _upstream(digest="d2")},  # the upstream stage's files changed
        {"extra": None},
    ],
)
def test_a_changed_input_changes_the_key(change: dict[str, object]) -> None:
    assert stage_key("train", CODE, _inputs(**change)) != stage_key("train", CODE, _inputs())


def test_stage_name_and_code_version_are_part_of_the_key() -> None:
    key = stage_key("train", CODE, _inputs())
    assert stage_key("evaluate", CODE, _inputs()) != key
    assert stage_key("train", "b" * 64, _inputs()) != key


def test_upstream_identity_is_its_stage_key_and_file_digests() -> None:
    base = _upstream()
    assert base.digest == _upstream().digest
    assert base.model_copy(update={"data": {"dim": 3}}).digest == base.digest  # data is not the identity
    assert base.model_copy(update={"key": "x" * 24}).digest != base.digest
    assert _upstream(digest="d2").digest != base.digest


def test_inputs_that_cannot_be_keyed_are_refused() -> None:
    with pytest.raises(TypeError, match="stage inputs must be"):
        stage_key("train", CODE, _inputs(tensor=object()))


# --- manifests and the stage body ----------------------------------------------------------------------

BUILDS: list[int] = []
DIE = {"after_first_file": False}


@stage_task("toy")
def toy_stage(ctx: StageContext, *, dataset: DatasetConfig) -> Built:
    """Write two files; die after the first (as a killed run would) while ``DIE`` says so."""
    BUILDS.append(dataset.n_train)
    first = ctx.folder / "a.txt"
    first.write_text(f"n_train={dataset.n_train}")
    if DIE["after_first_file"]:
        raise RuntimeError("killed")
    second = ctx.folder / "sub" / "b.bin"
    second.parent.mkdir(exist_ok=True)
    second.write_bytes(bytes(range(256)))
    return Built(files={"a": first, "b": second}, data={"n": dataset.n_train})


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    BUILDS.clear()
    monkeypatch.setitem(DIE, "after_first_file", False)
    return tmp_path / "artifacts"


def _edit_manifest(folder: Path, edit) -> None:
    """Apply ``edit`` to the stage output recorded in ``folder``'s manifest, keeping the old signature."""
    manifest = json.loads((folder / MANIFEST).read_text())
    edit(manifest["output"])
    (folder / MANIFEST).write_text(json.dumps(manifest))


def _edit_digest(folder: Path) -> None:
    _edit_manifest(folder, lambda output: output["digests"].update(a="0" * 64))


def _run(root: Path, **kwargs: object) -> StageOutput:
    return toy_stage.fn(root=str(root), dataset=kwargs.pop("dataset", DatasetConfig()), **kwargs)


def test_a_stage_writes_its_files_and_a_manifest_that_reads_back(root: Path) -> None:
    output = _run(root)
    folder = root / "toy" / output.key
    (build,) = [p.name for p in folder.iterdir() if p.is_dir()]  # each build writes its own folder of the key
    assert re.fullmatch(r"build-[0-9a-f]{16}", build)
    assert output.files == {"a": f"toy/{output.key}/{build}/a.txt", "b": f"toy/{output.key}/{build}/sub/b.bin"}
    assert output.path(root, "a").read_text() == "n_train=512" and output.data == {"n": 512}
    assert read_manifest(folder, root) == output
    assert json.loads((folder / MANIFEST).read_text())["output"]["digests"] == output.digests
    with pytest.raises(KeyError, match="has no file 'c'"):
        output.path(root, "c")


def test_a_verified_stage_is_not_rebuilt_unless_refreshed(root: Path) -> None:
    first = _run(root)
    assert not first.reused
    again = _run(root)
    assert again.reused and again.model_copy(update={"reused": False}) == first and BUILDS == [512]
    assert again.digest == first.digest  # being reused is not part of the identity downstream keys see
    rebuilt = _run(root, refresh=True)
    assert rebuilt.digest == first.digest and rebuilt.files != first.files and BUILDS == [512, 512]  # a new build
    other = _run(root, dataset=DatasetConfig(n_train=8))
    assert other.key != first.key and BUILDS == [512, 512, 8]


def _built(folder: Path, name: str) -> Path:
    """The file ``name`` of the build that ``folder``'s manifest names."""
    output = StageOutput.model_validate(json.loads((folder / MANIFEST).read_text())["output"])
    return output.path(folder.parent.parent, name)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda folder: _built(folder, "a").write_text("n_train=513"),  # content changed
        lambda folder: _built(folder, "b").unlink(),  # file deleted
        lambda folder: (folder / MANIFEST).unlink(),  # manifest missing (killed before it was written)
        lambda folder: (folder / MANIFEST).write_text((folder / MANIFEST).read_text()[:-20]),  # truncated
        _edit_digest,
    ],
    ids=["changed-file", "deleted-file", "no-manifest", "truncated-manifest", "edited-digest"],
)
def test_a_tampered_stage_is_rejected_and_rebuilt(root: Path, tamper) -> None:
    output = _run(root)
    folder = root / "toy" / output.key
    tamper(folder)
    assert read_manifest(folder, root) is None
    rebuilt = _run(root)
    assert not rebuilt.reused and rebuilt.digest == output.digest and BUILDS == [512, 512]
    assert read_manifest(folder, root) == rebuilt


def test_a_build_that_dies_leaves_no_manifest(root: Path) -> None:
    DIE["after_first_file"] = True
    with pytest.raises(RuntimeError, match="killed"):
        _run(root)
    (folder,) = (root / "toy").iterdir()
    assert len(list(folder.glob("build-*/a.txt"))) == 1 and not (folder / MANIFEST).exists()
    assert read_manifest(folder, root) is None
    DIE["after_first_file"] = False
    output = _run(root)  # the half-written folder was not taken as a result
    assert BUILDS == [512, 512] and output.key == folder.name and read_manifest(folder, root) == output


def test_a_refresh_that_dies_leaves_the_old_output_whole_and_verified(root: Path) -> None:
    """The refresh writes its own build folder, so the old manifest never describes half-rewritten files: it
    still verifies (a reader racing the rebuild gets it), and the next run without refresh takes it."""
    output = _run(root)
    DIE["after_first_file"] = True
    with pytest.raises(RuntimeError, match="killed"):
        _run(root, refresh=True)
    assert read_manifest(root / "toy" / output.key, root) == output
    DIE["after_first_file"] = False
    builds = len(BUILDS)
    again = _run(root)
    assert again.reused and again.files == output.files and len(BUILDS) == builds  # a cache hit: nothing built


def test_cache_policy_keys_like_the_stage_body(root: Path) -> None:
    policy = toy_stage.cache_policy
    assert isinstance(policy, ArtifactCachePolicy)
    inputs = {"root": str(root), "dataset": DatasetConfig(), "refresh": False}
    assert policy.compute_key(None, inputs, {}) == f"toy.{_run(root).key}"  # the stage names the record


# --- manifests that were edited, forged or point elsewhere ----------------------------------------------


def _resign(folder: Path, key: str) -> None:
    """Sign ``folder``'s manifest again, as an attacker who knows ``key`` (or a host with another key) would."""
    import hashlib
    import hmac

    manifest = json.loads((folder / MANIFEST).read_text())
    payload = json.dumps(manifest["output"], sort_keys=True).encode()
    manifest["signature"] = hmac.new(key.encode(), payload, hashlib.sha256).hexdigest()
    (folder / MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture
def host_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = "k3y-of-this-host-0123456789"
    monkeypatch.setenv("NODECORE_ARTIFACTS_KEY", key)
    return key


def test_forged_data_in_a_manifest_is_not_served(root: Path, host_key: str) -> None:
    output = _run(root)
    folder = root / "toy" / output.key
    _edit_manifest(folder, lambda recorded: recorded["data"].update(n=123))  # files untouched, digests valid
    assert read_manifest(folder, root) is None
    rebuilt = _run(root)
    assert rebuilt.digest == output.digest and rebuilt.data == {"n": 512} and BUILDS == [512, 512]  # not served


def test_a_manifest_signed_under_another_key_is_not_trusted(root: Path, host_key: str,
                                                             caplog: pytest.LogCaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    output = _run(root)
    folder = root / "toy" / output.key
    _resign(folder, host_key)
    assert read_manifest(folder, root) == output  # the same key: trusted (the control)
    _resign(folder, "some-other-hosts-key-42")
    monkeypatch.setattr(tasks.cache, "_unsigned_reported", False)
    with caplog.at_level(logging.WARNING, logger="tasks.cache"):
        assert read_manifest(folder, root) is None
        assert read_manifest(folder, root) is None  # said once per process, not once per manifest
    # and it says so: both hosts just recompute, so a key that differs between hosts would go unnoticed
    (message,) = [record.getMessage() for record in caplog.records]
    assert f"toy/{output.key} is not signed with this host's key (from NODECORE_ARTIFACTS_KEY)" in message
    assert "set NODECORE_ARTIFACTS_KEY on every host" in message


def test_a_manifest_without_signature_is_not_trusted(root: Path) -> None:
    output = _run(root)
    folder = root / "toy" / output.key
    (folder / MANIFEST).write_text(output.model_dump_json())  # the previous, unsigned format
    assert read_manifest(folder, root) is None


@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_a_manifest_naming_files_outside_the_root_is_refused(root: Path, host_key: str, tmp_path: Path,
                                                              where: str) -> None:
    output = _run(root)
    folder = root / "toy" / output.key
    secret = tmp_path / "outside.txt"
    secret.write_text("not an artifact")
    from nodecore.files import file_digest

    relative = str(secret) if where == "absolute" else "../outside.txt"
    _edit_manifest(folder, lambda recorded: (recorded["files"].update(a=relative),
                                             recorded["digests"].update(a=file_digest(secret))))
    _resign(folder, host_key)  # even a correctly signed manifest may not leave the root
    assert read_manifest(folder, root) is None
    forged = output.model_copy(update={"files": {**output.files, "a": relative}})
    with pytest.raises(ValueError, match="outside the artifacts root"):
        forged.path(root, "a")


def test_a_manifest_copied_into_another_folder_is_not_that_folders(root: Path) -> None:
    output = _run(root)
    other = root / "toy" / ("f" * 24)
    other.mkdir()
    (other / MANIFEST).write_bytes((root / "toy" / output.key / MANIFEST).read_bytes())
    assert read_manifest(other, root) is None


def test_the_device_a_process_runs_on_is_not_part_of_the_key() -> None:
    from tasks.cache import stage_key

    inputs = {"device": "cuda:3", "solver": "dopri5"}
    assert stage_key("train", "code", inputs) == stage_key("train", "code", {**inputs, "run_device": "cuda:0"})
    assert stage_key("train", "code", inputs) != stage_key("train", "code", {**inputs, "device": "cuda:2"})
