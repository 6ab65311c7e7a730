"""The artifacts store against a real S3 API (moto's server on loopback, through s3fs), and its local cases.

Stages run for real (``toy_stage`` of the cache tests) with the store as their root: files and the manifest
land in the bucket, a rerun from an empty working copy is served from the bucket, a damaged or forged object
is never trusted, and a stage whose process is killed in the middle of its upload is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from tasks.cache import MANIFEST, read_stage
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
