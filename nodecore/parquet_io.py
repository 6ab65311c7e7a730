"""Parquet plumbing shared by nodecore's file formats (:mod:`nodecore.dataset_io`, :mod:`nodecore.trajectory_io`).

Every nodecore Parquet file keeps a JSON object under the file-level key-value metadata key :data:`METADATA_KEY`:
the caller's metadata plus keys the writer fills in, always including ``nodecore_version`` and ``schema_version``.
The helpers here encode and check that object, compare a file's columns with the expected schema, and read or
atomically write a table; each format module passes its own :class:`ParquetFormatError` subclass, so its callers
see only that module's error type. Internal: the public surface is the format modules'.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nodecore._version import __version__
from nodecore.errors import CorruptFileError
from nodecore.files import atomic_write

__all__ = [
    "METADATA_KEY",
    "ParquetFormatError",
    "check_columns",
    "check_finite",
    "check_no_nulls",
    "decode_metadata",
    "encode_metadata",
    "read_table",
    "write_table",
]

METADATA_KEY = "nodecore"
_MAGIC = b"PAR1"  # Parquet files begin and end with it


class ParquetFormatError(ValueError):
    """A file is not a nodecore Parquet file of the expected schema (base of each format's own error)."""


def encode_metadata(
    metadata: dict[str, Any],
    added: Mapping[str, Any],
    *,
    schema_version: int,
    writer: str,
    required: Sequence[str] = (),
) -> bytes:
    """Complete the caller's ``metadata`` and return it as canonical JSON bytes (sorted keys, no NaN/inf).

    Args:
        metadata: the caller's dict; must hold every key in ``required`` and none of the added keys.
        added: format-specific keys the writer fills in (e.g. shape); ``nodecore_version`` and
            ``schema_version`` follow them.
        schema_version: the format's schema version, stored as ``schema_version``.
        writer: the public writer's name, for the message when a caller passes an added key.
        required: keys the caller must provide.

    Raises:
        ValueError: ``metadata`` is not a dict, lacks a required key, sets an added key, or is not JSON-serialisable
            without NaN/inf.
    """
    if not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}")
    full_added = {**added, "nodecore_version": __version__, "schema_version": schema_version}
    missing = [key for key in required if key not in metadata]
    if missing:
        raise ValueError(f"metadata is missing required key(s) {missing}")
    reserved = [key for key in full_added if key in metadata]
    if reserved:
        raise ValueError(f"metadata key(s) {reserved} are set by {writer}; do not pass them")
    try:
        return json.dumps({**metadata, **full_added}, sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError) as err:
        raise ValueError(f"metadata must be JSON-serialisable without NaN/inf: {err}") from err


def decode_metadata(
    schema: pa.Schema,
    path: Path,
    *,
    schema_version: int,
    error: type[ParquetFormatError],
    kind: str | None = None,
    positive_ints: Sequence[str] = (),
) -> dict[str, Any]:
    """Decode and check the nodecore JSON metadata stored in ``schema``.

    Checks, in order: the key is present, holds a JSON object, has ``kind`` equal to ``kind`` (when given), has
    ``schema_version`` equal to ``schema_version``, and holds a positive ``int`` (not ``bool``) under each key in
    ``positive_ints``.

    Raises:
        error: the first check that fails, with ``path`` and what was expected vs found.
    """
    raw = (schema.metadata or {}).get(METADATA_KEY.encode())
    if raw is None:
        raise error(f"{path}: expected file metadata key {METADATA_KEY!r}, found none")
    try:
        meta = json.loads(raw)
    except ValueError as err:
        raise error(f"{path}: metadata {METADATA_KEY!r} is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise error(f"{path}: expected metadata to be a JSON object, found {type(meta).__name__}")
    if kind is not None and meta.get("kind") != kind:
        raise error(f"{path}: expected kind {kind!r} in metadata, found {meta.get('kind')!r}")
    version = meta.get("schema_version")
    if version != schema_version:
        raise error(f"{path}: expected schema_version {schema_version}, found {version!r}")
    for key in positive_ints:
        value = meta.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise error(f"{path}: expected metadata {key!r} to be a positive integer, found {value!r}")
    return meta


def _type_name(arrow_type: pa.DataType) -> str:
    """Return a numpy-style name for an Arrow type (``float`` -> ``float32``)."""
    name = str(arrow_type)
    return {"halffloat": "float16", "float": "float32", "double": "float64"}.get(name, name)


def check_columns(schema: pa.Schema, expected: pa.Schema, path: Path, error: type[ParquetFormatError]) -> None:
    """Check that ``schema`` has exactly ``expected``'s column names and types, in order.

    Raises:
        error: names, order or types differ; the message lists the expected and found ``(name, type)`` pairs.
    """
    found = [(field.name, _type_name(field.type)) for field in schema]
    wanted = [(field.name, _type_name(field.type)) for field in expected]
    if found != wanted:
        raise error(f"{path}: expected columns {wanted}, found {found}")


def check_no_nulls(table: pa.Table, path: Path, error: type[ParquetFormatError]) -> None:
    """Raise ``error`` if any column of ``table`` holds a null."""
    if any(column.null_count for column in table.columns):
        raise error(f"{path}: expected no null values, found some")


def read_table(path: Path, error: type[ParquetFormatError], *, what: str) -> pa.Table:
    """Read the Parquet file at ``path``, verifying the page checksums :func:`write_table` stores.

    The bytes are read first and parsed from memory, so an ``OSError`` is only ever the disk's (worth a retry)
    and a failure to parse them is the file's: :class:`~nodecore.errors.CorruptFileError`, permanent.

    Args:
        path: the file.
        error: raised when the file is not Parquet at all.
        what: the kind of file, for the messages (``"no {what} file at {path}"``).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        OSError: the file's bytes cannot be read.
        error: the file is not Parquet (no ``PAR1`` magic at either end).
        CorruptFileError: a Parquet file that is truncated, fails a page checksum or cannot be decoded.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file at {path}")
    data = path.read_bytes()
    try:
        table = pq.read_table(pa.BufferReader(data), page_checksum_verification=True)
        table.schema.names  # noqa: B018  (decodes the column names: a damaged footer can hold invalid UTF-8)
    except (OSError, pa.ArrowException, UnicodeDecodeError) as err:
        if data and not (data.startswith(_MAGIC) or data.endswith(_MAGIC)):
            raise error(f"{path}: expected a Parquet file, could not read it: {err}") from err
        raise CorruptFileError(
            f"{path}: the {what} file is damaged ({len(data)} bytes, truncated or corrupted) and cannot be read: "
            f"{err}; regenerate it",
            path,
        ) from err
    return table


def write_table(path: str | os.PathLike[str], table: pa.Table) -> Path:
    """Write ``table`` to ``path`` with :func:`nodecore.files.atomic_write`, with a CRC checksum on every page
    (which :func:`read_table` verifies); return ``path`` as a ``Path``."""
    with atomic_write(path) as handle:
        pq.write_table(table, handle, write_page_checksum=True)
    return Path(path)


def check_finite(table: pa.Table, columns: Sequence[str], path: Path, error: type[ParquetFormatError]) -> None:
    """Raise ``error`` naming how many NaN/Inf values the float ``columns`` of ``table`` hold and the first one's
    row and column (rows as stored in the file)."""
    count, first = 0, None
    for name in columns:
        bad = ~np.isfinite(table.column(name).to_numpy())
        if bad.any():
            count += int(bad.sum())
            row = int(np.argmax(bad))
            if first is None or row < first[0]:
                first = (row, name)
    if first is not None:
        raise error(
            f"{path}: expected finite values (the writer refuses NaN/Inf), found {count} NaN/Inf value(s), the first "
            f"at row {first[0]}, column {first[1]!r}"
        )
