"""Prefect cache records that are the stage manifests themselves, so nothing read from the store runs as code.

Prefect 3.9 keeps a cached task's result as a record file in its result storage and, on a cache hit,
deserializes it with the serializer *the record names* (``ResultRecord.deserialize``; a record that does not
parse is handed to the store's fallback serializer, pickle by default). A record in a shared artifacts folder
is therefore code: replacing one with a cloudpickle payload ran it on the next cached rerun, and a forged but
well-formed record was served as the stage's result although its manifest said otherwise.

:class:`ManifestRecords` is the result storage of every stage instead. It writes nothing: the stage body has
already written ``<root>/<stage>/<key>/manifest.json``. Asked for the record of ``key``, it re-derives it from
that manifest, verified file by file (:func:`tasks.cache.read_manifest`), and hands Prefect bytes it built
itself, encoded with :class:`StageOutputSerializer` (plain JSON validated as a :class:`StageOutput`). No byte of
the store reaches a Prefect deserializer, and a manifest that no longer verifies is simply a cache miss.
The root may be any store :mod:`tasks.store` takes (a folder or an fsspec URL).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
from prefect.filesystems import WritableFileSystem
from pydantic import Field

from tasks.cache import StageOutputSerializer, read_stage
from tasks.store import artifact_store

_RECORD = re.compile(r"^(?P<stage>[a-z][a-z-]*)\.(?P<key>[0-9a-f]{24})$")  # tasks.cache.record_key


class ManifestRecords(WritableFileSystem):
    """Result storage of the stages under the artifacts ``root``: a record exists exactly when its manifest verifies.

    Prefect takes only blocks saved on the server as result storage; :func:`saved_records` saves one per
    artifacts root (two API calls per run).
    """

    _block_type_name = "nodecore manifest records"
    _description = "Cache records of nodecore's pipeline stages: their verified manifests, never pickles."

    root: str = Field(description="the artifacts store (folder or URL) whose stage manifests are the records")

    def read_path(self, path: str, _sync: bool | None = None) -> bytes:
        """The record of cache key ``path``, rebuilt from its stage's verified manifest.

        Raises:
            ValueError: no verified manifest for that key (Prefect takes it as a cache miss).
        """
        match = _RECORD.match(Path(path).name)
        if match is None:
            raise ValueError(f"not a stage cache key: {path!r}")
        output = read_stage(artifact_store(self.root), match["stage"], match["key"])
        if output is None:
            raise ValueError(f"no verified manifest for cache key {match['key']} of stage {match['stage']} "
                             f"under {self.root}")
        metadata = ResultRecordMetadata(storage_key=path, serializer=StageOutputSerializer())
        return ResultRecord(metadata=metadata, result=output.model_copy(update={"reused": True})).serialize()

    def write_path(self, path: str, content: bytes, _sync: bool | None = None) -> str:
        """Keep nothing: the stage's manifest, written by the stage itself, is the record."""
        return path

    async def aread_path(self, path: str) -> bytes:
        return self.read_path(path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        return self.write_path(path, content)


def saved_records(root: Path | str) -> ManifestRecords:
    """The :class:`ManifestRecords` block of the store ``root``, saved on the Prefect server (needs an API connection)."""
    block = ManifestRecords(root=str(root))
    block.save(f"artifacts-{hashlib.sha256(str(root).encode()).hexdigest()[:16]}", overwrite=True)
    return block


def stage_result_options(records: ManifestRecords) -> dict[str, Any]:
    """The task options that make a stage's Prefect cache read its manifests through ``records``."""
    return {"result_storage": records, "result_serializer": StageOutputSerializer()}
