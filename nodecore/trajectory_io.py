"""Parquet storage for integrated trajectories (the state of B samples at T depths) with a validated schema.

File layout (schema version :data:`SCHEMA_VERSION`): long format, one row per (depth, sample), ordered by
``t_index`` then ``sample``; columns ``t_index`` (int32), ``t`` (float64), ``sample`` (int64), ``label`` (int64),
then ``z0 .. z{D-1}`` (float32), all non-null. The file-level key-value metadata key :data:`METADATA_KEY` holds a
JSON object with the caller's metadata (solver, checkpoint digest, ...) plus ``kind`` (``"trajectory"``), ``T``,
``B``, ``D``, ``nodecore_version`` and ``schema_version`` filled in by :func:`write_trajectory`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

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
    "KIND",
    "METADATA_KEY",
    "SCHEMA_VERSION",
    "TrajectoryFormatError",
    "read_trajectory",
    "write_trajectory",
]

SCHEMA_VERSION = 1
KIND = "trajectory"
_INDEX_FIELDS = (
    ("t_index", pa.int32()),
    ("t", pa.float64()),
    ("sample", pa.int64()),
    ("label", pa.int64()),
)


class TrajectoryFormatError(ParquetFormatError):
    """A file is not a nodecore trajectory Parquet file of the expected schema."""


def _schema(dim: int, metadata: dict[bytes, bytes] | None = None) -> pa.Schema:
    """Return the expected schema for ``dim`` state columns."""
    fields = [pa.field(name, arrow_type, nullable=False) for name, arrow_type in _INDEX_FIELDS]
    fields += [pa.field(f"z{j}", pa.float32(), nullable=False) for j in range(dim)]
    return pa.schema(fields, metadata=metadata)


def _check_arrays(
    t_eval: torch.Tensor, trajectory: torch.Tensor, labels: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate ``t_eval`` [T], ``trajectory`` [T, B, D] and ``labels`` [B]; return float64 / float32 / int64 arrays."""
    tensors = {"t_eval": t_eval, "trajectory": trajectory, "labels": labels}
    if not all(isinstance(value, torch.Tensor) for value in tensors.values()):
        kinds = ", ".join(f"{name}={type(value).__name__}" for name, value in tensors.items())
        raise ValueError(f"t_eval, trajectory and labels must be torch.Tensor, got {kinds}")
    if t_eval.ndim != 1 or not t_eval.is_floating_point() or len(t_eval) < 1:
        raise ValueError(
            f"t_eval must be a non-empty 1-D floating tensor [T], got {t_eval.dtype} {tuple(t_eval.shape)}"
        )
    if trajectory.ndim != 3 or not trajectory.is_floating_point() or trajectory.numel() == 0:
        raise ValueError(
            "trajectory must be a non-empty 3-D floating tensor [T, B, D], "
            f"got {trajectory.dtype} {tuple(trajectory.shape)}"
        )
    if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-D integer tensor [B], got {labels.dtype} {tuple(labels.shape)}")
    n_times, n_samples, _ = trajectory.shape
    if n_times != len(t_eval):
        raise ValueError(f"trajectory [T, B, D] must have T = len(t_eval) = {len(t_eval)}, got T = {n_times}")
    if n_samples != len(labels):
        raise ValueError(f"trajectory [T, B, D] must have B = len(labels) = {len(labels)}, got B = {n_samples}")
    t_np = t_eval.detach().cpu().to(torch.float64).numpy()
    z_np = trajectory.detach().cpu().to(torch.float32).numpy()
    if not np.isfinite(t_np).all():
        raise ValueError("t_eval must contain only finite values")
    if not np.isfinite(z_np).all():
        raise ValueError("trajectory must contain only finite values (after conversion to float32)")
    return t_np, z_np, labels.detach().cpu().to(torch.int64).numpy()


def write_trajectory(
    path: str | os.PathLike[str],
    t_eval: torch.Tensor,
    trajectory: torch.Tensor,
    labels: torch.Tensor,
    *,
    metadata: dict[str, Any],
) -> Path:
    """Atomically write a trajectory and its metadata to a Parquet file, one row per (depth, sample).

    Written with :func:`nodecore.files.atomic_write`: on any error ``path`` is left untouched.

    Args:
        path: destination file; parent directories are created.
        t_eval: depths [T], floating, finite; stored as float64.
        trajectory: states [T, B, D] at those depths, floating, finite; stored as float32.
        labels: labels of the B samples [B], integer; stored as int64.
        metadata: JSON-serialisable dict describing the solve (solver, tolerances, ...); must not contain
            ``kind``, ``T``, ``B``, ``D``, ``nodecore_version`` or ``schema_version`` (they are added).

    Returns:
        The destination path as a ``Path``.

    Raises:
        ValueError: invalid tensors (type, dtype, shape, non-finite values) or ``metadata``.
        OSError: the file cannot be written.
    """
    t_np, z_np, labels_np = _check_arrays(t_eval, trajectory, labels)
    n_times, n_samples, dim = z_np.shape
    meta_json = encode_metadata(
        metadata,
        {"kind": KIND, "T": n_times, "B": n_samples, "D": dim},
        schema_version=SCHEMA_VERSION,
        writer="write_trajectory",
    )
    rows = z_np.reshape(n_times * n_samples, dim)
    columns = [
        pa.array(np.repeat(np.arange(n_times, dtype=np.int32), n_samples)),
        pa.array(np.repeat(t_np, n_samples)),
        pa.array(np.tile(np.arange(n_samples, dtype=np.int64), n_times)),
        pa.array(np.tile(labels_np, n_times)),
    ] + [pa.array(np.ascontiguousarray(rows[:, j])) for j in range(dim)]
    table = pa.Table.from_arrays(columns, schema=_schema(dim, {METADATA_KEY.encode(): meta_json}))
    return write_table(path, table)


def _check_rows(table: pa.Table, shape: tuple[int, int, int], path: Path) -> np.ndarray:
    """Check that the rows are the T x B grid once each; return the order that sorts them by (t_index, sample)."""
    n_times, n_samples, _ = shape
    if table.num_rows != n_times * n_samples:
        raise TrajectoryFormatError(
            f"{path}: expected T*B = {n_times}*{n_samples} = {n_times * n_samples} rows from metadata, "
            f"found {table.num_rows}"
        )
    check_no_nulls(table, path, TrajectoryFormatError)
    t_index = table.column("t_index").to_numpy().astype(np.int64)
    sample = table.column("sample").to_numpy()
    in_range = (t_index >= 0) & (t_index < n_times) & (sample >= 0) & (sample < n_samples)
    key = t_index * n_samples + sample
    order = np.argsort(key, kind="stable")
    if not in_range.all() or not np.array_equal(key[order], np.arange(n_times * n_samples)):
        raise TrajectoryFormatError(
            f"{path}: expected each (t_index, sample) in [0, {n_times}) x [0, {n_samples}) exactly once, "
            "found missing, repeated or out-of-range pairs"
        )
    return order


def read_trajectory(
    path: str | os.PathLike[str],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Read a trajectory written by :func:`write_trajectory`, validating its schema.

    Rows may be in any order; they are sorted by (``t_index``, ``sample``).

    Args:
        path: Parquet file to read.

    Returns:
        ``(t_eval, trajectory, labels, metadata)``: t_eval float64 [T], trajectory float32 [T, B, D],
        labels int64 [B], and the full metadata dict.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        OSError: the file's bytes cannot be read (a disk or network problem).
        CorruptFileError: the file is damaged (truncated, failed page checksum, undecodable).
        TrajectoryFormatError: not Parquet, not a trajectory (e.g. a dataset file), wrong columns/dtypes, nulls,
            NaN/Inf depths or states, rows that do not form the T x B grid, or ``t`` / ``label`` inconsistent
            across rows.
    """
    path = Path(path)
    table = read_table(path, TrajectoryFormatError, what="trajectory")
    meta = decode_metadata(
        table.schema,
        path,
        schema_version=SCHEMA_VERSION,
        error=TrajectoryFormatError,
        kind=KIND,
        positive_ints=("T", "B", "D"),
    )
    shape = (meta["T"], meta["B"], meta["D"])
    n_times, n_samples, dim = shape
    check_columns(table.schema, _schema(dim), path, TrajectoryFormatError)
    order = _check_rows(table, shape, path)
    check_finite(table, ["t", *(f"z{j}" for j in range(dim))], path, TrajectoryFormatError)

    def column(name: str) -> np.ndarray:
        return table.column(name).to_numpy()[order]

    t_grid = column("t").reshape(n_times, n_samples)
    label_grid = column("label").reshape(n_times, n_samples)
    if not (t_grid == t_grid[:, :1]).all():
        raise TrajectoryFormatError(f"{path}: expected one value of t per t_index, found several")
    if not (label_grid == label_grid[:1]).all():
        raise TrajectoryFormatError(f"{path}: expected one label per sample, found several")
    states = np.stack([column(f"z{j}") for j in range(dim)], axis=1).reshape(n_times, n_samples, dim)
    return (
        torch.from_numpy(np.ascontiguousarray(t_grid[:, 0])),
        torch.from_numpy(np.ascontiguousarray(states)),
        torch.from_numpy(np.ascontiguousarray(label_grid[0])),
        meta,
    )
