"""Stages as cached, retried Prefect tasks whose outputs are files under the artifacts folder.

Each stage writes into ``<root>/<stage>/<key>/``; the key digests everything that determines the output:
the stage's inputs (configs and the digests of upstream outputs) and its code version (see
:mod:`tasks.code_version`). A ``manifest.json`` written last, atomically, lists the files with their
SHA-256; a folder without a valid manifest is never taken as a result, so a killed run leaves nothing that
a later run trusts.

Two layers use the same key:

* Prefect's cache (:class:`ArtifactCachePolicy`): the task run is reported ``Cached`` and its body is
  skipped. Its records live beside the artifacts (``<root>/.prefect-results``), so they survive a fresh
  Prefect database. A record whose manifest no longer verifies (files deleted or changed) is dropped
  before Prefect looks it up, so the stage is recomputed rather than trusted.
* The manifest check inside the task body: a stage whose files are all present is not recomputed even
  when Prefect's record is gone.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from prefect import task
from prefect.cache_policies import CachePolicy
from pydantic import BaseModel, ConfigDict

from nodecore.files import atomic_write, file_digest
from tasks.code_version import code_digest

MANIFEST = "manifest.json"
RESULTS_DIR = ".prefect-results"
# Inputs that say where or how a stage runs, not what it computes: never part of the key.
CONTROL_INPUTS = ("root", "refresh", "run_device")


class StageOutput(BaseModel):
    """What a stage produced: files (relative to the artifacts root) with their digests, and small data."""

    model_config = ConfigDict(frozen=True)

    stage: str
    key: str
    files: dict[str, str]
    digests: dict[str, str]
    data: dict[str, Any] = {}

    @property
    def digest(self) -> str:
        """Identity of this output for downstream cache keys."""
        return _sha256({"stage": self.stage, "key": self.key, "digests": self.digests})

    def path(self, root: str | Path, name: str) -> Path:
        """Absolute path of the file ``name`` under the artifacts ``root``."""
        try:
            return Path(root) / self.files[name]
        except KeyError:
            raise KeyError(f"stage {self.stage!r} has no file {name!r}; it has {sorted(self.files)}") from None


@dataclass(frozen=True)
class StageContext:
    """Where a stage runs: its own output ``folder`` and the artifacts ``root`` its inputs live under."""

    folder: Path
    root: Path


@dataclass(frozen=True)
class Built:
    """What a stage's build function returns: the files it wrote (in its folder) and small JSON data."""

    files: Mapping[str, Path]
    data: Mapping[str, Any]


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


def read_manifest(folder: Path, root: Path) -> StageOutput | None:
    """The stage output recorded in ``folder``, or None unless every listed file is intact."""
    try:
        output = StageOutput.model_validate_json((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    for name, relative in output.files.items():
        path = root / relative
        if not path.is_file() or file_digest(path) != output.digests.get(name):
            return None
    return output


def _write_manifest(folder: Path, root: Path, stage: str, key: str, built: Built) -> StageOutput:
    files = {name: Path(path).resolve().relative_to(root.resolve()).as_posix() for name, path in built.files.items()}
    digests = {name: file_digest(root / relative) for name, relative in files.items()}
    output = StageOutput(stage=stage, key=key, files=files, digests=digests, data=dict(built.data))
    with atomic_write(folder / MANIFEST) as handle:
        handle.write(output.model_dump_json(indent=2).encode())
    return output


@dataclass
class ArtifactCachePolicy(CachePolicy):
    """Prefect cache policy keyed like the artifacts, trusting a record only while its files verify."""

    stage: str = ""
    code_file: str = ""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        root = Path(inputs["root"])
        key = stage_key(self.stage, code_digest(Path(self.code_file)), inputs)
        if read_manifest(root / self.stage / key, root) is None:
            (root / RESULTS_DIR / key).unlink(missing_ok=True)  # stale: its files are gone or changed
        return key


def stage_task(stage: str, **task_options: Any) -> Callable[[Callable[..., Built]], Any]:
    """Turn ``build(ctx: StageContext, *, <inputs>) -> Built`` into a Prefect task returning a :class:`StageOutput`.

    The task takes ``root`` (the artifacts folder) and ``refresh`` (recompute even if cached) besides the
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
            root = Path(inputs.pop("root"))
            refresh = inputs.pop("refresh")
            key = stage_key(stage, code_digest(Path(code_file)), inputs)
            folder = root / stage / key
            if not refresh and (cached := read_manifest(folder, root)) is not None:
                return cached
            folder.mkdir(parents=True, exist_ok=True)
            (folder / MANIFEST).unlink(missing_ok=True)
            return _write_manifest(folder, root, stage, key, build(StageContext(folder, root), **inputs))

        run.__signature__ = signature  # type: ignore[attr-defined]
        run.__name__ = build.__name__
        run.__qualname__ = build.__qualname__
        run.__doc__ = build.__doc__
        run.__module__ = build.__module__
        options = {"name": stage, "persist_result": True, **task_options}
        return task(cache_policy=ArtifactCachePolicy(stage=stage, code_file=code_file), **options)(run)

    return decorate
