"""The artifacts store against a real S3 API (moto's server on loopback, through s3fs), and its local cases.

Stages run for real (``toy_stage`` of the cache tests) with the store as their root: files and the manifest
land in the bucket, a rerun from an empty working copy is served from the bucket, a damaged or forged object
is never trusted, and a stage whose process is killed in the middle of its upload is recomputed. Two builds of
one key raced object by object leave a verified stage, old builds are pruned, and an object the bucket lost
behind a matching local copy makes the stage a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
import uuid
from pathlib import Path

import pytest

import tasks.cache
from tasks.cache import MANIFEST, Built, StageContext, StageOutput, fetch_inputs, read_stage, stage_task
from tasks.config import DatasetConfig
from tasks.store import CACHE_ENV, ArtifactStore, artifact_store, check_location, normalise
from tests.tasks.test_cache import BUILDS, toy_stage

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bucket(s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket's URL (with a prefix), and a fresh local working copy for this test."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "working-copy"))
    name = f"nodecore-{uuid.uuid4().hex[:12]}"
    store = ArtifactStore(f"s3://{name}")
    store.fs.mkdir(name)
    BUILDS.clear()
    return f"s3://{name}/runs/a"


def _run(location: str, **kwargs: object):
    return toy_stage.fn(root=location, dataset=DatasetConfig(), **kwargs)


def _objects(store: ArtifactStore) -> dict[str, bytes]:
    store.fs.invalidate_cache()
    return {path[len(store.base) + 1:]: store.fs.cat_file(path) for path in store.fs.find(store.base)}


def test_locations_have_one_spelling_and_bad_ones_are_refused_before_work(tmp_path: Path) -> None:
    assert normalise(str(tmp_path / "x" / ".." / "y")) == str(tmp_path / "y")
    assert normalise(f"file://{tmp_path}/y/") == str(tmp_path / "y")
    assert normalise("s3://bucket/prefix/") == "s3://bucket/prefix"
    with pytest.raises(ValueError, match=r"unknown store protocol 'nope' in 'nope://x'.*s3"):
        check_location("nope://x")
    with pytest.raises(ValueError, match="names no bucket"):
        check_location("s3://")


def test_a_stage_on_s3_writes_its_files_then_its_manifest_into_the_bucket(bucket: str) -> None:
    output = _run(bucket)
    store = artifact_store(bucket)
    objects = _objects(store)
    assert set(objects) == {output.files["a"], output.files["b"], f"toy/{output.key}/{MANIFEST}"}
    for name, relative in output.files.items():
        assert hashlib.sha256(objects[relative]).hexdigest() == output.digests[name]
    assert json.loads(objects[f"toy/{output.key}/{MANIFEST}"])["output"]["key"] == output.key
    assert not any(".partial-" in key for key in objects)  # every upload was moved onto its key


def test_a_rerun_from_an_empty_working_copy_is_served_from_the_bucket(bucket: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    first = _run(bucket)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "another-host"))
    fresh = ArtifactStore(bucket)  # what a second host sees: the bucket, and nothing local
    assert not fresh.local_root.exists()
    assert read_stage(fresh, "toy", first.key) == first
    assert (fresh.local_root / first.files["a"]).read_text() == "n_train=512"  # downloaded, verified
    assert BUILDS == [512]


def test_a_damaged_object_in_the_bucket_is_not_trusted_and_is_rebuilt(bucket: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    first = _run(bucket)
    store = artifact_store(bucket)
    store.fs.pipe_file(f"{store.base}/{first.files['b']}", b"flipped")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "another-host"))
    fresh = ArtifactStore(bucket)
    assert read_stage(fresh, "toy", first.key) is None
    assert fresh.fetch(first.files["b"], first.digests["b"]) is None  # never copied into the working copy
    assert not (fresh.local_root / first.files["b"]).exists()


def test_a_damaged_working_copy_is_replaced_from_the_bucket(bucket: str) -> None:
    first = _run(bucket)
    store = artifact_store(bucket)
    local = store.local_root / first.files["a"]
    local.write_text("tampered locally")
    assert read_stage(store, "toy", first.key) == first
    assert local.read_text() == "n_train=512"


def test_a_forged_manifest_in_the_bucket_is_recomputed(bucket: str) -> None:
    first = _run(bucket)
    store = artifact_store(bucket)
    manifest = json.loads(store.read_bytes(f"toy/{first.key}/{MANIFEST}"))
    manifest["output"]["data"]["n"] = 7  # files and digests intact, the signature no longer matches
    store.write_bytes(f"toy/{first.key}/{MANIFEST}", json.dumps(manifest).encode())
    again = _run(bucket)
    assert again.data == {"n": 512} and BUILDS == [512, 512]


def test_a_missing_bucket_is_named_before_any_work(s3_server: str) -> None:
    store = ArtifactStore(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x")
    with pytest.raises(ValueError, match=r"the store 's3://no-such-bucket-.*' cannot be written"):
        store.check_writable()


_KILLED_UPLOAD = """
import os, sys, time
sys.path.insert(0, {repo!r})
from tasks.store import ArtifactStore
from tests.tasks.test_cache import toy_stage
from tasks.config import DatasetConfig

real_put = ArtifactStore.put
def put_then_hang(self, local, relative):
    if relative.endswith("b.bin"):  # the second file: upload it under its temporary key, then stop dead
        self.fs.put_file(str(local), self._key(relative) + ".partial-killed")
        print("UPLOADING", flush=True)
        time.sleep(600)
    real_put(self, local, relative)
ArtifactStore.put = put_then_hang
toy_stage.fn(root={location!r}, dataset=DatasetConfig())
"""


def test_a_stage_killed_in_the_middle_of_its_upload_is_recomputed(bucket: str) -> None:
    script = _KILLED_UPLOAD.format(repo=str(REPO), location=bucket)
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE,
                               cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == b"UPLOADING"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    store = artifact_store(bucket)
    left = _objects(store)
    (key,) = {relative.split("/")[1] for relative in left}
    assert any(name.endswith("b.bin.partial-killed") for name in left)  # the half-finished upload
    assert f"toy/{key}/{MANIFEST}" not in left and read_stage(store, "toy", key) is None

    output = _run(bucket)
    assert output.key == key and not output.reused and BUILDS == [512]  # recomputed in this process
    assert read_stage(store, "toy", key) == output


def test_an_in_memory_store_works_like_any_other(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "working-copy"))
    BUILDS.clear()
    location = f"memory://nodecore-{uuid.uuid4().hex[:8]}/run"
    first = _run(location)
    store = artifact_store(location)
    assert not store.is_local and store.read_bytes(first.files["a"]) == b"n_train=512"
    url = store.url(first.files["a"])  # fsspec spells memory paths from "/": memory:///bucket/...
    assert url.startswith("memory://") and url.endswith(f"{location[len('memory://'):]}/{first.files['a']}")
    again = _run(location)
    assert again.reused and again.key == first.key and BUILDS == [512]


def test_paths_leaving_the_store_and_chained_urls_are_refused(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "artifacts"))
    for bad in ("../outside.json", "/etc/passwd", "a/../../b"):
        with pytest.raises(ValueError, match="is not a relative path inside the store"):
            store.write_bytes(bad, b"x")
        with pytest.raises(ValueError, match="is not a relative path inside the store"):
            store.remove(bad)
    assert not (tmp_path / "outside.json").exists()
    with pytest.raises(ValueError, match="chained fsspec URLs are not supported"):
        check_location("simplecache::memory://b/x")


# --- two builds of one key, lost objects, old builds -------------------------------------------------------


@stage_task("racy")
def racy_stage(ctx: StageContext, *, dataset: DatasetConfig) -> Built:
    """Two files whose bytes differ from build to build, as two hosts' trainings of one cell may."""
    token = secrets.token_hex(8)
    (ctx.folder / "a.txt").write_text(token)
    (ctx.folder / "sub").mkdir()
    (ctx.folder / "sub" / "b.bin").write_text(token * 2)
    return Built(files={"a": ctx.folder / "a.txt", "b": ctx.folder / "sub" / "b.bin"}, data={"token": token})


class Turns:
    """Lets a racing thread's store write (an upload or the manifest) through only when ``script`` says it is that
    thread's turn: two builds interleaved object by object, in a chosen order. Other threads pass freely."""

    def __init__(self, script: list[str]) -> None:
        self.script, self.cond = list(script), threading.Condition()

    def __call__(self, write):
        def in_turn(store: ArtifactStore, *args: object) -> object:
            who = threading.current_thread().name
            if who not in self.script:
                return write(store, *args)
            with self.cond:
                assert self.cond.wait_for(lambda: self.script[0] == who, timeout=60), (who, self.script)
            try:
                return write(store, *args)
            finally:
                with self.cond:
                    self.script.pop(0)
                    self.cond.notify_all()
        return in_turn


def _host(location: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> ArtifactStore:
    """The store as a host with its own working copy ``folder`` sees it."""
    monkeypatch.setenv(CACHE_ENV, str(folder))
    store = ArtifactStore(location)
    assert store.local_root.parent == folder  # fixed now: the working copy is read once
    return store


def test_two_builds_of_one_key_interleaved_object_by_object_leave_a_verified_stage(
        bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host that timed out but still runs races the cell re-dispatched to another host: A uploads a, B uploads a,
    A uploads b, B uploads b, B writes its manifest, A writes its manifest (last: it wins)."""
    hosts = {name: _host(bucket, tmp_path / f"host-{name}", monkeypatch) for name in ("A", "B")}
    monkeypatch.setattr(tasks.cache, "artifact_store", lambda location: hosts[threading.current_thread().name])
    turns = Turns(["A", "B", "A", "B", "B", "A"])
    monkeypatch.setattr(ArtifactStore, "put", turns(ArtifactStore.put))
    monkeypatch.setattr(ArtifactStore, "write_bytes", turns(ArtifactStore.write_bytes))
    outputs: dict[str, StageOutput] = {}

    def build() -> None:
        outputs[threading.current_thread().name] = racy_stage.fn(root=bucket, dataset=DatasetConfig())

    threads = [threading.Thread(target=build, name=name) for name in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert set(outputs) == {"A", "B"} and not turns.script
    a, b = outputs["A"], outputs["B"]
    assert a.key == b.key and a.digests != b.digests  # one key, two different builds

    fresh = _host(bucket, tmp_path / "host-C", monkeypatch)  # a third host: the bucket only
    assert read_stage(fresh, "racy", a.key) == a  # the manifest written last names objects that match it
    fetch_inputs(fresh, {"a": a, "b": b})  # and the loser's objects are still there for its downstream stages
    monkeypatch.setattr(tasks.cache, "artifact_store", lambda location: fresh)
    again = racy_stage.fn(root=bucket, dataset=DatasetConfig())
    assert again.reused and again.data == a.data  # the next run takes it from the cache: nothing is recomputed


def test_builds_the_manifest_does_not_name_are_pruned_once_old(bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _run(bucket)
    store = artifact_store(bucket)
    second = _run(bucket, refresh=True)
    builds = lambda: {name.split("/")[0] for name in store.listing(f"toy/{first.key}") if "/" in name}
    build_of = lambda output: output.files["a"].split("/")[2]
    assert builds() == {build_of(first), build_of(second)}  # within the grace: a racing build's may still be in use

    later = types.SimpleNamespace(time=lambda: time.time() + tasks.cache.ORPHAN_GRACE_SECONDS + 60)
    monkeypatch.setattr(tasks.cache, "time", later)  # two builds, both older than the grace by now
    third = _run(bucket, refresh=True)
    assert builds() == {build_of(third)} and set(_objects(store)) == {*third.files.values(), f"toy/{first.key}/{MANIFEST}"}
    assert not (store.local_root / "toy" / first.key / build_of(first)).exists()  # the working copy's too
    assert read_stage(ArtifactStore(bucket), "toy", first.key) == third


@pytest.mark.parametrize("loss", ["deleted", "replaced-by-shorter"])
def test_an_object_the_bucket_lost_behind_a_matching_local_copy_is_recomputed(
        bucket: str, monkeypatch: pytest.MonkeyPatch, loss: str) -> None:
    first = _run(bucket)
    store = artifact_store(bucket)
    reads: list[str] = []
    real_cat = store.fs.cat_file
    monkeypatch.setattr(store.fs, "cat_file", lambda path, *a, **k: reads.append(path) or real_cat(path, *a, **k))
    assert read_stage(store, "toy", first.key) == first  # the control: a hit...
    assert reads == [f"{store.base}/toy/{first.key}/{MANIFEST}"]  # ...that downloads nothing but the manifest

    lost = f"{store.base}/{first.files['b']}"
    store.fs.rm_file(lost) if loss == "deleted" else store.fs.pipe_file(lost, b"short")
    assert (store.local_root / first.files["b"]).read_bytes() == bytes(range(256))  # the local copy still matches
    assert read_stage(store, "toy", first.key) is None  # but the store no longer holds what the manifest names
    again = _run(bucket)
    assert not again.reused and BUILDS == [512, 512]  # recomputed
    assert read_stage(ArtifactStore(bucket), "toy", first.key) == again
