"""Links a browser opens: presigned URLs to a remote store's files, against a real S3 API (moto's server).

A presigned link is fetched with plain ``urllib`` (no credentials) and must give the object's exact bytes. moto
serves a private object only to a request that is signed or carries a URL signature, but it does not check a
URL signature's value or its expiry (seen with moto 5.2: a URL with a zeroed signature, an edited key or a
lapsed expiry is still served). So the tests ask moto only what it enforces (an unsigned request is refused)
and check the rest as S3 does, recomputing the SigV4 signature from the secret key with botocore's signer.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from pydantic import ValidationError

import tasks.report
from flows.cli import parse_config
from tasks.cache import StageOutput
from tasks.config import DEFAULT_LINK_EXPIRY_SECONDS, MAX_LINK_EXPIRY_SECONDS, PipelineConfig
from tasks.render import THUMBNAIL
from tasks.report import publish_report
from tasks.store import CACHE_ENV, ArtifactStore

SIGV4_PARAMS = {"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders",
                "X-Amz-Signature"}
LINK = re.compile(r"\[([^\]]+)\]\(([^)]+)\)")  # a markdown link: [text](target)


@pytest.fixture
def bucket(s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket's URL (with a prefix), and a fresh local working copy for this test."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "working-copy"))
    name = f"nodecore-{uuid.uuid4().hex[:12]}"
    ArtifactStore(f"s3://{name}").fs.mkdir(name)
    return f"s3://{name}/grid"


def download(url: str) -> bytes:
    """GET ``url`` as a browser would: no credentials, no proxy."""
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=10) as response:
        return response.read()


def refusal(url: str) -> int:
    """The HTTP status with which the server refuses ``url`` (fails if it serves it)."""
    with pytest.raises(urllib.error.HTTPError) as info:
        download(url)
    return info.value.code


def params(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def sigv4_signature(url: str, *, secret: str) -> str:
    """The SigV4 query signature S3 expects on ``url`` (its own credential scope, date and expiry) for ``secret``."""
    query = params(url)
    access_key, _, region, service, _ = query["X-Amz-Credential"].split("/")
    auth = S3SigV4QueryAuth(Credentials(access_key, secret), service, region, expires=int(query["X-Amz-Expires"]))
    request = AWSRequest(method="GET", url=re.sub(r"&X-Amz-Signature=[0-9a-f]+", "", url))
    request.context["timestamp"] = query["X-Amz-Date"]
    return auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)


def assert_presigned(url: str, *, endpoint: str, expires_in: int) -> None:
    """``url`` is a SigV4 presigned GET of the S3 server at ``endpoint``, signed now, valid ``expires_in`` s."""
    query = params(url)
    assert url.startswith(f"{endpoint}/") and set(query) == SIGV4_PARAMS, url  # a signature, no secret or token
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256" and query["X-Amz-Expires"] == str(expires_in)
    assert query["X-Amz-Credential"].startswith(f"{os.environ['AWS_ACCESS_KEY_ID']}/")
    signed_at = datetime.datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    assert abs(time.time() - signed_at.timestamp()) < 300
    assert query["X-Amz-Signature"] == sigv4_signature(url, secret=os.environ["AWS_SECRET_ACCESS_KEY"])


# --- the store's links ---------------------------------------------------------------------------------


def test_a_presigned_link_downloads_the_objects_exact_bytes_without_credentials(s3_server: str, bucket: str) -> None:
    store = ArtifactStore(bucket)
    data = os.urandom(300_000) + b"\x00end"
    store.write_bytes("train/abc/checkpoint.pt", data)
    url = store.browser_url("train/abc/checkpoint.pt", 900)
    assert_presigned(url, endpoint=s3_server, expires_in=900)
    assert urlsplit(url).path == f"/{bucket[len('s3://'):]}/train/abc/checkpoint.pt"
    assert download(url) == data
    assert store.url("train/abc/checkpoint.pt") == f"{bucket}/train/abc/checkpoint.pt"  # unchanged


def test_the_server_refuses_an_unsigned_request_and_a_tampered_link_fails_the_signature(
        s3_server: str, bucket: str) -> None:
    store = ArtifactStore(bucket)
    store.write_bytes("a/one.bin", b"one")
    store.write_bytes("a/two.bin", b"two")
    url = store.browser_url("a/one.bin", 60)
    # What moto enforces: a private object is not served to a request without a signature.
    assert refusal(url.split("?", 1)[0]) == 403
    assert refusal(re.sub(r"&X-Amz-Signature=[0-9a-f]+", "", url)) == 403
    # What S3 checks besides (moto does not): the signature covers the key, the expiry and the signing time,
    # and only the secret key makes it.
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    signature = params(url)["X-Amz-Signature"]
    assert sigv4_signature(url, secret=secret) == signature
    for tampered in (url.replace("/a/one.bin", "/a/two.bin"), url.replace("X-Amz-Expires=60", "X-Amz-Expires=604800"),
                     re.sub(r"X-Amz-Date=\d{8}T", "X-Amz-Date=20000101T", url)):
        assert tampered != url and sigv4_signature(tampered, secret=secret) != signature, tampered
    assert sigv4_signature(url, secret=secret + "x") != signature
    assert download(url) == b"one"


def test_a_store_that_cannot_sign_and_a_local_store_keep_their_urls(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "working-copy"))
    memory = ArtifactStore(f"memory://nodecore-{uuid.uuid4().hex[:8]}/run")
    with pytest.raises(NotImplementedError):
        memory.fs.sign(memory.base + "/x.bin")  # what makes it fall back
    assert memory.browser_url("x.bin", 900) == memory.url("x.bin") and memory.url("x.bin").startswith("memory://")
    local = ArtifactStore(str(tmp_path / "artifacts"))
    assert local.browser_url("x.bin", 900) == local.url("x.bin") == (tmp_path / "artifacts" / "x.bin").as_uri()
    for store in (memory, local):
        with pytest.raises(ValueError, match="is not a relative path inside the store"):
            store.browser_url("../outside.bin", 900)


# --- the report's artifacts ------------------------------------------------------------------------------


def _cell(store: ArtifactStore, name: str = "euler@cpu") -> tuple[dict[str, StageOutput], bytes]:
    """A grid cell's stage outputs, their files written to ``store``; and its checkpoint's bytes."""
    blobs = {"checkpoint": ("train/t0/checkpoint.pt", os.urandom(50_000)),
             "decision": ("render/r0/decision.png", b"\x89PNG plot"),
             THUMBNAIL.format(plot="decision"): ("render/r0/decision.thumbnail.jpg", b"\xff\xd8 thumbnail")}
    for relative, data in blobs.values():
        store.write_bytes(relative, data)

    def output(stage: str, key: str, names: list[str], **data: Any) -> StageOutput:
        return StageOutput(stage=stage, key=key, files={n: blobs[n][0] for n in names}, data=data,
                           digests={n: hashlib.sha256(blobs[n][1]).hexdigest() for n in names})

    cell = {"metrics": output("evaluate", "e0", [], cell=name, classes=2, test_accuracy=0.9, train_accuracy=0.9),
            "trained": output("train", "t0", ["checkpoint"]),
            "plots": output("render", "r0", ["decision", THUMBNAIL.format(plot="decision")], plots=["decision"])}
    return cell, blobs["checkpoint"][1]


def _publish(monkeypatch: pytest.MonkeyPatch, root: str, cells: list[dict[str, StageOutput]],
             **kwargs: Any) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Run the report task's body, recording the artifacts it creates (by key) instead of sending them."""
    created: dict[str, dict[str, Any]] = {}
    for name in ("create_link_artifact", "create_markdown_artifact", "create_table_artifact"):
        monkeypatch.setattr(tasks.report, name, lambda **artifact: created.__setitem__(artifact["key"], artifact))
    return publish_report.fn(root, cells, **kwargs), created


def _report(store: ArtifactStore) -> str:
    """This run's report, relative to the store."""
    return f"reports/{store.read_bytes('reports/LATEST').decode().strip()}/report.md"


def test_the_reports_artifacts_link_presigned_urls_shown_as_the_store_url(
        s3_server: str, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ArtifactStore(bucket)
    cell, checkpoint = _cell(store)
    result, created = _publish(monkeypatch, bucket, [cell], link_expiry_seconds=1234)
    checkpoint_url = f"{bucket}/train/t0/checkpoint.pt"

    report = created["nodecore-report-file"]
    assert report["link_text"] == result["report"] == store.url(_report(store))
    assert_presigned(report["link"], endpoint=s3_server, expires_in=1234)
    assert download(report["link"]) == store.read_bytes(_report(store))
    assert "presigned, valid until" in report["description"]

    table = created["nodecore-checkpoints"]
    (text, target), = LINK.findall(table["markdown"])
    assert f"| euler@cpu | [{checkpoint_url}](" in table["markdown"] and text == checkpoint_url
    assert_presigned(target, endpoint=s3_server, expires_in=1234)
    assert download(target) == checkpoint
    assert "presigned, valid until" in table["description"]

    link = created["nodecore-checkpoint-euler-cpu"]
    assert link["link_text"] == checkpoint_url and download(link["link"]) == checkpoint
    assert_presigned(link["link"], endpoint=s3_server, expires_in=1234)

    # report.md in the bucket links its plots relative to itself: nothing in it expires or carries a signature.
    stored = store.read_bytes(_report(store)).decode()
    assert "X-Amz-" not in stored and "](../../render/r0/decision.png)" in stored and "](../../train/t0/)" in stored
    assert result["latest_report"] == f"{bucket}/report.md"  # the console still names the store's URLs


def test_the_default_expiry_applies_and_a_bad_one_is_refused_before_anything_is_written(
        s3_server: str, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ArtifactStore(bucket)
    cell, _ = _cell(store)
    for bad in (0, MAX_LINK_EXPIRY_SECONDS + 1):
        with pytest.raises(ValueError, match=rf"link expiry of {bad} seconds is out of range; give 1 to 604800"):
            _publish(monkeypatch, bucket, [cell], link_expiry_seconds=bad)
    assert store.read_bytes("report.md") is None and store.names("reports") == []
    _, created = _publish(monkeypatch, bucket, [cell])
    assert params(created["nodecore-report-file"]["link"])["X-Amz-Expires"] == str(DEFAULT_LINK_EXPIRY_SECONDS)


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_stores_that_do_not_sign_publish_the_links_they_did(kind: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "working-copy"))
    root = f"memory://nodecore-{uuid.uuid4().hex[:8]}/run" if kind == "memory" else str(tmp_path / "artifacts")
    store = ArtifactStore(root)
    cell, _ = _cell(store)
    result, created = _publish(monkeypatch, root, [cell], link_expiry_seconds=60)
    url = store.url("train/t0/checkpoint.pt")
    assert url.startswith("memory://" if kind == "memory" else "file://")
    report = created["nodecore-report-file"]
    assert report["link"] == store.url(_report(store))
    assert report["link_text"] == result["report"] and report["description"] == "this run's report.md"
    assert created["nodecore-checkpoints"]["markdown"].endswith(f"| euler@cpu | [{url}]({url}) |")
    assert created["nodecore-checkpoints"]["description"] == "the trained weights of every cell"
    link = created["nodecore-checkpoint-euler-cpu"]
    assert (link["link"], link["link_text"], link["description"]) == (url, "checkpoint euler@cpu",
                                                                       "trained weights of euler@cpu")
    # The UI's copy of the report names the stage folders as text: a relative link there would lead nowhere.
    ui = created["nodecore-report"]["markdown"]
    assert "| euler@cpu | `evaluate/e0` · `train/t0` · `render/r0` |" in ui and "](train/t0/)" not in ui
    assert "](../../train/t0/)" in store.read_bytes(_report(store)).decode()  # the file's copy links them


# --- the option ------------------------------------------------------------------------------------------


def test_the_link_expiry_is_validated_with_its_range_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert PipelineConfig().run.link_expiry_seconds == DEFAULT_LINK_EXPIRY_SECONDS
    for good in (1, MAX_LINK_EXPIRY_SECONDS):
        assert PipelineConfig.model_validate({"run": {"link_expiry_seconds": good}}).run.link_expiry_seconds == good
    for bad in (0, -1, MAX_LINK_EXPIRY_SECONDS + 1):
        with pytest.raises(ValidationError) as info:
            PipelineConfig.model_validate({"run": {"link_expiry_seconds": bad}})
        (error,) = info.value.errors()
        assert error["loc"] == ("run", "link_expiry_seconds")
        assert f"{bad} seconds is out of range; give 1 to 604800 seconds" in error["msg"], error["msg"]
    with pytest.raises(SystemExit) as exit_info:
        parse_config(PipelineConfig, ["--run.link_expiry_seconds", "700000"], prog="train_flow.py")
    assert exit_info.value.code == 2
    assert ("--run.link_expiry_seconds: a link expiry of 700000 seconds is out of range; give 1 to 604800 seconds"
            in capsys.readouterr().err)
    schema = PipelineConfig.model_json_schema()["$defs"]["RunConfig"]["properties"]["link_expiry_seconds"]
    assert (schema["minimum"], schema["maximum"]) == (1, MAX_LINK_EXPIRY_SECONDS)  # the UI form's limits
    with pytest.raises(SystemExit):
        parse_config(PipelineConfig, ["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--run.link_expiry_seconds int" in help_text and "presigned https links" in help_text


def test_a_store_that_fails_to_sign_links_its_url_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """gcsfs without a service account, adlfs without an account key, ...: the report still publishes."""
    store = ArtifactStore(f"memory://nodecore-{uuid.uuid4().hex[:8]}/run")

    def sign(path: str, expiration: int = 100) -> str:
        raise PermissionError("no private key to sign with")

    monkeypatch.setattr(store.fs, "sign", sign)
    with caplog.at_level("WARNING", logger="tasks.store"):
        assert store.browser_url("x.bin", 60) == store.url("x.bin")
    assert "could not presign" in caplog.text and "no private key" in caplog.text
