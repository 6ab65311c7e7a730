"""Parquet storage for labelled datasets with a fixed, validated schema.

File layout (schema version :data:`SCHEMA_VERSION`): columns ``x0 .. x{D-1}``
(float32, non-null) then ``label`` (int64, non-null); the file-level key-value
metadata key :data:`METADATA_KEY` holds a JSON object with the caller's
``dataset_type``, ``params`` and ``seed`` plus ``n_samples``, ``dim``,
``nodecore_version`` and ``schema_version`` filled in by :func:`write_dataset`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from nodecore.files import file_digest  # noqa: F401  (file_digest re-exported)
from nodecore.parquet_io import (
    METADATA_KEY,
    ParquetFormatError,
    check_columns,
    check_finite,
    check_no_nulls,
    decode_metadata,
    encode_metadata,
    read_table,
    write_table,
)

__all__ = [
    "METADATA_KEY",
    "SCHEMA_VERSION",
    "DatasetFormatError",
    "content_digest",
    "file_digest",
    "read_dataset",
    "write_dataset",
]

SCHEMA_VERSION = 1
LABEL_COLUMN = "label"
_REQUIRED_KEYS = ("dataset_type", "params", "seed")


class DatasetFormatError(ParquetFormatError):
    """A file is not a nodecore dataset Parquet file of the expected schema."""


def _schema(dim: int, metadata: dict[bytes, bytes] | None = None) -> pa.Schema:
    """Return the expected schema for ``dim`` feature columns."""
    fields = [pa.field(f"x{j}", pa.float32(), nullable=False) for j in range(dim)]
    fields.append(pa.field(LABEL_COLUMN, pa.int64(), nullable=False))
    return pa.schema(fields, metadata=metadata)


def _check_arrays(X: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``X`` [N, D] floating and ``y`` [N] integer; return float32 / int64 arrays."""
    if not isinstance(X, torch.Tensor) or not isinstance(y, torch.Tensor):
        kinds = f"{type(X).__name__}, {type(y).__name__}"
        raise ValueError(f"X and y must be torch.Tensor, got {kinds}")
    if X.ndim != 2 or not X.is_floating_point() or X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(
            f"X must be a non-empty 2-D floating tensor [N, D], got {X.dtype} {tuple(X.shape)}"
        )
    if y.ndim != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"y must be a 1-D integer tensor [N], got {y.dtype} {tuple(y.shape)}")
    if len(y) != len(X):
        raise ValueError(f"X and y must have the same length, got {len(X)} and {len(y)}")
    X_np = X.detach().cpu().to(torch.float32).numpy()
    if not np.isfinite(X_np).all():
        raise ValueError("X must contain only finite values (after conversion to float32)")
    return X_np, y.detach().cpu().to(torch.int64).numpy()


def write_dataset(
    path: str | os.PathLike[str], X: torch.Tensor, y: torch.Tensor, *, metadata: dict[str, Any]
) -> Path:
    """Atomically write ``(X, y)`` and metadata to a Parquet file.

    Written with :func:`nodecore.files.atomic_write`: on any error ``path`` is left untouched.

    Args:
        path: destination file; parent directories are created.
        X: features [N, D], floating, finite; stored as float32.
        y: labels [N], integer; stored as int64.
        metadata: JSON-serialisable dict with at least ``dataset_type``,
            ``params`` and ``seed``; must not contain ``n_samples``, ``dim``,
            ``nodecore_version`` or ``schema_version`` (they are added).

    Returns:
        The destination path as a ``Path``.

    Raises:
        ValueError: invalid ``X``, ``y`` or ``metadata``.
        OSError: the file cannot be written.
    """
    X_np, y_np = _check_arrays(X, y)
    n_samples, dim = X_np.shape
    meta_json = encode_metadata(
        metadata,
        {"n_samples": n_samples, "dim": dim},
        schema_version=SCHEMA_VERSION,
        writer="write_dataset",
        required=_REQUIRED_KEYS,
    )
    columns = [pa.array(np.ascontiguousarray(X_np[:, j])) for j in range(dim)] + [pa.array(y_np)]
    table = pa.Table.from_arrays(columns, schema=_schema(dim, {METADATA_KEY.encode(): meta_json}))
    return write_table(path, table)


def _check_schema(schema: pa.Schema, path: Path) -> int:
    """Check column names and types against the expected layout; return D (at least 1)."""
    dim = sum(1 for name in schema.names if name != LABEL_COLUMN)
    # With no feature column, compare with the smallest valid layout so the mismatch is reported.
    check_columns(schema, _schema(max(dim, 1)), path, DatasetFormatError)
    return dim


def read_dataset(
    path: str | os.PathLike[str],
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Read a dataset written by :func:`write_dataset`, validating its schema.

    Args:
        path: Parquet file to read.

    Returns:
        ``(X, y, metadata)``: X float32 [N, D], y int64 [N], and the full metadata dict.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        OSError: the file's bytes cannot be read (a disk or network problem).
        CorruptFileError: the file is damaged (truncated, failed page checksum, undecodable).
        DatasetFormatError: not Parquet, wrong columns/dtypes, nulls, NaN/Inf features (the message gives their
            count and the first one's row and column), or bad metadata.
    """
    path = Path(path)
    table = read_table(path, DatasetFormatError, what="dataset")
    dim = _check_schema(table.schema, path)
    meta = decode_metadata(
        table.schema, path, schema_version=SCHEMA_VERSION, error=DatasetFormatError
    )
    if table.num_rows != meta.get("n_samples") or dim != meta.get("dim"):
        raise DatasetFormatError(
            f"{path}: expected n_samples={meta.get('n_samples')!r}, dim={meta.get('dim')!r} "
            f"from metadata, found {table.num_rows} rows and {dim} feature columns"
        )
    check_no_nulls(table, path, DatasetFormatError)
    check_finite(table, [f"x{j}" for j in range(dim)], path, DatasetFormatError)
    X = np.stack([table.column(f"x{j}").to_numpy() for j in range(dim)], axis=1)
    y = table.column(LABEL_COLUMN).to_numpy()
    return torch.from_numpy(np.ascontiguousarray(X)), torch.from_numpy(np.array(y)), meta


def content_digest(X: torch.Tensor, y: torch.Tensor) -> str:
    """Return a SHA-256 hex digest of the data, independent of file encoding.

    Args:
        X: features [N, D], hashed as float32.
        y: labels [N], hashed as int64.

    Returns:
        Hex digest over the shape and the raw little-endian bytes of X and y.
    """
    X_np, y_np = _check_arrays(X, y)
    digest = hashlib.sha256(f"{X_np.shape[0]}x{X_np.shape[1]}".encode())
    digest.update(X_np.astype("<f4").tobytes())
    digest.update(y_np.astype("<i8").tobytes())
    return digest.hexdigest()
