"""Stages as cached, retried Prefect tasks whose outputs are files in the artifacts store.

The store is a local folder or any fsspec URL (:mod:`tasks.store`). Each build of a stage writes into its
own ``<root>/<stage>/<key>/build-<random>/``; the key digests everything that determines the output:
the stage's inputs (configs and the digests of upstream outputs) and its code version (see
:mod:`tasks.code_version`). ``<stage>/<key>/manifest.json``, written last, atomically, lists the files with their
SHA-256; a folder without a valid manifest is never taken as a result, so a killed run leaves nothing that
a later run trusts. A manifest may name only files inside the artifacts root.

Two builds of one key (a host that timed out but still runs, and its cell re-dispatched to another host) never
write the same names: whichever manifest is written last names its own build's files, which match it. After
its manifest is written, a build deletes the builds of its key that the manifest does not name and that have
not been written to for :data:`ORPHAN_GRACE_SECONDS` (a race's loser may still be feeding its downstream stages).

Two layers use the same key:

* Prefect's cache (:class:`ArtifactCachePolicy`): the task run is reported ``Cached`` and its body is
  skipped. Its "records" are the manifests themselves (:mod:`tasks.records`): nothing else is stored, and
  what a cached stage returns is rebuilt from its verified manifest, so it survives a fresh Prefect database
  and nothing in the store is ever unpickled.
* The manifest check inside the task body: a stage whose files are all present is not recomputed even
  when Prefect's cache is bypassed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from prefect import task
from prefect.cache_policies import CachePolicy
from prefect.serializers import Serializer
from pydantic import BaseModel, ConfigDict, Field

from nodecore.files import file_digest
from tasks import signing
from tasks.code_version import code_digest
from tasks.store import ArtifactStore, artifact_store

MANIFEST = "manifest.json"
BUILD_PREFIX = "build-"  # each build's folder under its key: build-<16 hex digits>
_BUILD = re.compile(rf"^{BUILD_PREFIX}[0-9a-f]{{16}}$")
ORPHAN_GRACE_SECONDS = 3600.0  # a build its key's manifest does not name is deleted only once this long untouched
_log = logging.getLogger(__name__)
_unsigned_reported = False  # whether this process has said that a manifest's signature did not verify
# Inputs that say where or how a stage runs, not what it computes: never part of the key.
CONTROL_INPUTS = ("root", "refresh", "run_device", "cell_name")


class StageOutput(BaseModel):
    """What a stage produced: files (relative to the artifacts root) with their digests, and small data.

    ``reused`` says that this run took the output from the cache instead of computing it; it is not part of
    the output's identity (:attr:`digest`).
    """

    model_config = ConfigDict(frozen=True)

    stage: str
    key: str
    files: dict[str, str]
    digests: dict[str, str]
    data: dict[str, Any] = {}
    reused: bool = False

    @property
    def digest(self) -> str:
        """Identity of this output for downstream cache keys."""
        return _sha256({"stage": self.stage, "key": self.key, "digests": self.digests})

    def path(self, root: str | Path, name: str) -> Path:
        """Absolute path of the file ``name`` under the artifacts ``root``.

        Raises:
            KeyError: the stage has no such file.
            ValueError: the recorded path leads outside ``root``.
        """
        try:
            relative = self.files[name]
        except KeyError:
            raise KeyError(f"stage {self.stage!r} has no file {name!r}; it has {sorted(self.files)}") from None
        return confined(Path(root), relative)


class StageOutputSerializer(Serializer):  # type: ignore[type-arg]
    """Prefect serializer for stage results: JSON in and out, validated as a :class:`StageOutput`, never code."""

    type: str = Field(default="nodecore-stage-output", frozen=True)

    def dumps(self, obj: StageOutput) -> bytes:
        return StageOutput.model_validate(obj).model_dump_json().encode()

    def loads(self, blob: bytes) -> StageOutput:
        return StageOutput.model_validate_json(blob)


@dataclass(frozen=True)
class StageContext:
    """Where a stage runs: this build's own local output ``folder``, the local ``root`` its inputs were fetched
    into, and ``key_folder``, its cache key's folder, which every build of the key shares.

    ``folder`` is unique to the build (``<key_folder>/build-<random>``). Files that must outlive a build (a
    training's resume checkpoints) go in ``key_folder``: with a remote store, :meth:`share` and :meth:`restore`
    move them to and from the store itself (all three folders are in the store's local working copy).
    """

    folder: Path
    root: Path
    key_folder: Path
    store: ArtifactStore | None = None

    def _relative(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.root.resolve()).as_posix()

    def share(self, *paths: Path) -> None:
        """Upload files of the key folder to the store now, before the stage's manifest exists."""
        if self.store is not None:
            for path in paths:
                self.store.put(path, self._relative(path))

    def unshare(self, *paths: Path) -> None:
        """Delete files of the key folder from the store (their local copies too)."""
        if self.store is not None:
            for path in paths:
                self.store.remove(self._relative(path))

    def shared(self) -> list[Path]:
        """The files directly in the key folder that the store holds (as paths in :attr:`key_folder`)."""
        if self.store is None:
            return []
        return [self.key_folder / name for name in self.store.names(self._relative(self.key_folder))]

    def restore(self, name: str, digest: str | None = None) -> Path | None:
        """A local copy of the key folder's file ``name`` as the store holds it, downloaded if need be; None if
        there is none (or, given ``digest``, none with that SHA-256). Without ``digest`` it is unverified: the
        caller checks it (a resume record's signature)."""
        path = self.key_folder / name
        if self.store is None:
            return path if path.is_file() else None
        relative = self._relative(path)
        return self.store.download(relative) if digest is None else self.store.fetch(relative, digest)


@dataclass(frozen=True)
class Built:
    """What a stage's build function returns: the files it wrote (in its folder) and small JSON data.

    ``discard`` names files of the key folder (a training's resume checkpoints) to delete, here and in the
    store, in that order, and only once the stage's manifest is in the store: a build killed before keeps them.
    """

    files: Mapping[str, Path]
    data: Mapping[str, Any]
    discard: tuple[Path, ...] = ()


def _canonical(value: Any) -> Any:
    if isinstance(value, StageOutput):
        return {"upstream": value.stage, "digest": value.digest}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"stage inputs must be configs, StageOutputs or plain values, got {type(value).__name__}")


def _sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def stage_key(stage: str, code: str, inputs: Mapping[str, Any]) -> str:
    """The cache key of a stage run: its name, code version and determining inputs."""
    determining = {k: v for k, v in inputs.items() if k not in CONTROL_INPUTS}
    return _sha256({"stage": stage, "code": code, "inputs": _canonical(determining)})[:24]


def confined(root: Path, relative: str) -> Path:
    """``root / relative``, refusing a path that is absolute or leads outside ``root`` (through ``..`` or links).

    Raises:
        ValueError: naming the path and the root.
    """
    path = Path(relative)
    resolved_root = root.resolve()
    if path.is_absolute() or not (root / path).resolve().is_relative_to(resolved_root):
        raise ValueError(f"artifact path {relative!r} is outside the artifacts root {str(resolved_root)!r}")
    return root / path


class _SignedManifest(BaseModel):
    """What ``manifest.json`` holds: the stage output and its signature (:mod:`tasks.signing`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    output: StageOutput
    signature: str


def _signed_payload(output: StageOutput) -> bytes:
    return json.dumps(output.model_dump(mode="json"), sort_keys=True).encode()


def _verified(blob: bytes | None, stage: str, key: str, fetch: Callable[[str, str], bool]) -> StageOutput | None:
    """The stage output in manifest bytes ``blob`` if it is signed, names ``stage``/``key``, and every file it
    lists passes ``fetch(relative, digest)``; else None."""
    if blob is None:
        return None
    try:
        manifest = _SignedManifest.model_validate_json(blob)
    except ValueError:
        return None
    output = manifest.output
    if not signing.verify(_signed_payload(output), manifest.signature):
        # Edited, or (far more often) written by a host with another key: say so once, since both just recompute.
        global _unsigned_reported
        if not _unsigned_reported:
            _unsigned_reported = True
            _log.warning("the manifest of %s/%s is not signed with this host's key (from %s): it is not trusted and "
                         "the stage is recomputed; hosts that share a store need the same key (set %s on every "
                         "host). Further such manifests are not reported.", stage, key, signing.key_source(),
                         signing.KEY_ENV)
        return None
    if (output.stage, output.key) != (stage, key) or set(output.files) != set(output.digests):
        return None
    if not all(fetch(relative, output.digests[name]) for name, relative in output.files.items()):
        return None
    return output


def read_manifest(folder: Path, root: Path) -> StageOutput | None:
    """The stage output recorded in the local ``folder``, or None unless it is signed, the folder's own, and intact.

    "Signed" means under this host's key (an edited manifest is not trusted); "its own" that it names this
    folder's stage and key; "intact" that every listed file lies inside ``root`` with the recorded SHA-256.
    """

    def intact(relative: str, digest: str) -> bool:
        try:
            path = confined(root, relative)
        except ValueError:
            return False
        return path.is_file() and file_digest(path) == digest

    try:
        blob = (folder / MANIFEST).read_bytes()
    except OSError:
        return None
    return _verified(blob, folder.parent.name, folder.name, intact)


def read_stage(store: ArtifactStore, stage: str, key: str) -> StageOutput | None:
    """The verified output of ``stage``/``key`` in ``store``, its files present in the store's local root.

    For a remote store the manifest is read from the store and each file is checked (and if need be
    downloaded) against the digest it records: see :meth:`ArtifactStore.fetch`. The store itself must still
    hold every file, with the size of the verified copy (one listing of the key's folder): a local copy alone
    vouches for nothing, and a file the store lost makes the stage a miss, so it is recomputed.
    """
    if store.is_local:
        return read_manifest(store.local_root / stage / key, store.local_root)
    folder = f"{stage}/{key}/"
    held: dict[str, tuple[int, float | None]] | None = None

    def fetched(relative: str, digest: str) -> bool:
        nonlocal held
        try:
            confined(store.local_root, relative)
        except ValueError:
            return False
        if held is None:  # listed once the signature verified, and only then
            held = store.listing(folder.rstrip("/"))
        stored = held.get(relative[len(folder):]) if relative.startswith(folder) else None
        local = store.fetch(relative, digest) if stored is not None else None
        return local is not None and local.stat().st_size == stored[0]

    return _verified(store.read_bytes(f"{folder}{MANIFEST}"), stage, key, fetched)


def cached_output(store: ArtifactStore, stage: str, key: str) -> StageOutput | None:
    """What a run of ``stage`` with cache ``key`` takes from the cache instead of computing (marked ``reused``):
    its verified output, or None."""
    output = read_stage(store, stage, key)
    return None if output is None else output.model_copy(update={"reused": True})


def fetch_inputs(store: ArtifactStore, inputs: Mapping[str, Any]) -> None:
    """Bring the files of every upstream :class:`StageOutput` in ``inputs`` into the store's local root, verified.

    Raises:
        ValueError: an upstream file is missing from the store or does not have its recorded digest.
    """
    for value in inputs.values():
        outputs = value if isinstance(value, (list, tuple)) else [value]
        for output in outputs:
            if not isinstance(output, StageOutput):
                continue
            for name, relative in output.files.items():
                confined(store.local_root, relative)
                if store.fetch(relative, output.digests[name]) is None:
                    raise ValueError(f"{output.stage} output {name!r} ({store.url(relative)}) is missing from the "
                                     "store or does not match its manifest's digest; rerun with --run.refresh")


def _write_manifest(store: ArtifactStore, stage: str, key: str, built: Built) -> StageOutput:
    """Upload the built files (a remote store), then write the signed manifest: last, so it vouches for them.

    The files' names are their build's own (``<stage>/<key>/build-<random>/...``): a concurrent build of the
    same key uploads other objects, so the manifest that is written last names files that match it.
    """
    root = store.local_root
    files = {name: Path(path).resolve().relative_to(root.resolve()).as_posix() for name, path in built.files.items()}
    digests = {name: file_digest(root / relative) for name, relative in files.items()}
    for relative in files.values():
        store.put(root / relative, relative)
    output = StageOutput(stage=stage, key=key, files=files, digests=digests, data=dict(built.data))
    manifest = _SignedManifest(output=output, signature=signing.sign(_signed_payload(output)))
    store.write_bytes(f"{stage}/{key}/{MANIFEST}", manifest.model_dump_json(indent=2).encode())
    return output


def _build_of(relative: str, stage: str, key: str) -> str | None:
    """The build folder name in a manifest's file path ``<stage>/<key>/build-.../...``, if it has one."""
    parts = relative.split("/")
    return parts[2] if len(parts) > 3 and parts[:2] == [stage, key] and _BUILD.match(parts[2]) else None


def prune_builds(store: ArtifactStore, stage: str, key: str, output: StageOutput) -> list[str]:
    """Delete from the store (and the local root) the builds of ``stage``/``key`` that ``output`` does not name
    and whose newest object is older than :data:`ORPHAN_GRACE_SECONDS`; return their names.

    The grace keeps a concurrent build's objects while it may still be uploading them or feeding its downstream
    stages; a build whose store gives no modification times is kept.
    """
    named = {_build_of(relative, stage, key) for relative in output.files.values()}
    newest: dict[str, float | None] = {}
    for name, (_, modified) in store.listing(f"{stage}/{key}").items():
        build, sep, _ = name.partition("/")
        if sep and _BUILD.match(build) and build not in named:
            before = newest.get(build, float("-inf"))
            newest[build] = None if modified is None or before is None else max(before, modified)
    cutoff = time.time() - ORPHAN_GRACE_SECONDS
    old = sorted(build for build, modified in newest.items() if modified is not None and modified < cutoff)
    for build in old:
        store.remove_folder(f"{stage}/{key}/{build}")
    return old


def _settle(store: ArtifactStore, context: StageContext, output: StageOutput, built: Built) -> None:
    """After the manifest is in the store: discard what the build asked to (resume checkpoints), then prune old
    builds. Best effort: the output is already complete, so a failure here is logged, not raised."""
    try:
        context.unshare(*built.discard)
    except Exception as err:  # the store's own errors vary (botocore, OSError, ...)
        _log.warning("%s/%s: could not delete %d superseded files from %s: %s", output.stage, output.key,
                     len(built.discard), store.location, err)
    try:
        prune_builds(store, output.stage, output.key, output)
    except Exception as err:
        _log.warning("%s/%s: could not delete old builds from %s: %s", output.stage, output.key, store.location, err)


@dataclass
class ArtifactCachePolicy(CachePolicy):
    """Prefect cache policy keyed like the artifacts (the records behind the keys: :mod:`tasks.records`)."""

    stage: str = ""
    code_file: str = ""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        return record_key(self.stage, stage_key(self.stage, code_digest(Path(self.code_file)), inputs))


def record_key(stage: str, key: str) -> str:
    """Prefect's cache key of a stage run: ``<stage>.<key>``, so the record's manifest is found in one read."""
    return f"{stage}.{key}"


def stage_task(stage: str, **task_options: Any) -> Callable[[Callable[..., Built]], Any]:
    """Turn ``build(ctx: StageContext, *, <inputs>) -> Built`` into a Prefect task returning a :class:`StageOutput`.

    The task takes ``root`` (the artifacts store: a folder or URL) and ``refresh`` (recompute even if cached) besides the
    build function's keyword inputs. Retries, names and the like go in ``task_options``.
    """

    def decorate(build: Callable[..., Built]) -> Any:
        code_file = inspect.getsourcefile(build)
        assert code_file is not None
        build_params = list(inspect.signature(build).parameters.values())[1:]
        signature = inspect.Signature(
            [inspect.Parameter("root", inspect.Parameter.KEYWORD_ONLY, annotation=str), *build_params,
             inspect.Parameter("refresh", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool)],
            return_annotation=StageOutput,
        )

        def run(**kwargs: Any) -> StageOutput:
            bound = signature.bind(**kwargs)
            bound.apply_defaults()
            inputs = dict(bound.arguments)
            store = artifact_store(inputs.pop("root"))
            refresh = inputs.pop("refresh")
            key = stage_key(stage, code_digest(Path(code_file)), inputs)
            if not refresh and (cached := cached_output(store, stage, key)) is not None:
                return cached
            # A rebuild (a refresh, or after a miss) writes a build folder of its own, so an old manifest keeps
            # vouching for its own untouched files until the new one replaces it: a reader racing this build
            # (another host's dispatch reading its cell result) still finds a verified output.
            fetch_inputs(store, inputs)
            key_folder = store.local_root / stage / key
            folder = key_folder / f"{BUILD_PREFIX}{secrets.token_hex(8)}"
            folder.mkdir(parents=True)
            context = StageContext(folder, store.local_root, key_folder, store)
            built = build(context, **inputs)
            output = _write_manifest(store, stage, key, built)
            _settle(store, context, output, built)
            return output

        run.__signature__ = signature  # type: ignore[attr-defined]
        run.__name__ = build.__name__
        run.__qualname__ = build.__qualname__
        run.__doc__ = build.__doc__
        run.__module__ = build.__module__
        # Never Prefect's default pickle, even where no ManifestRecords storage is set (see tasks.records).
        options = {"name": stage, "persist_result": True, "result_serializer": StageOutputSerializer(),
                   **task_options}
        return task(cache_policy=ArtifactCachePolicy(stage=stage, code_file=code_file), **options)(run)

    return decorate
