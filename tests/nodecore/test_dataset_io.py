"""Tests for nodecore.dataset_io: round trip, schema checks, atomic writes, digests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nodecore import dataset_io
from nodecore._version import __version__
from nodecore.dataset_io import (
    SCHEMA_VERSION,
    DatasetFormatError,
    content_digest,
    file_digest,
    read_dataset,
    write_dataset,
)
from nodecore.datasets import ToyDataset, resolve_params

META = {"dataset_type": "spheres", "params": resolve_params("spheres", dim=3), "seed": 5}


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return ToyDataset().generate(257, "spheres", noise=0.1, seed=5, dim=3)


@pytest.fixture
def written(tmp_path: Path, data) -> Path:
    return write_dataset(tmp_path / "ds.parquet", *data, metadata=META)


def _write_table(path: Path, columns: dict[str, pa.Array], meta: dict | None) -> Path:
    raw = None if meta is None else {b"nodecore": json.dumps(meta).encode()}
    pq.write_table(pa.table(columns).replace_schema_metadata(raw), path)
    return path


def _good_meta(n: int, dim: int) -> dict:
    return {**META, "n_samples": n, "dim": dim, "schema_version": SCHEMA_VERSION}


def test_round_trip_is_exact(written: Path, data) -> None:
    X, y = data
    X2, y2, meta = read_dataset(written)
    assert X2.dtype == torch.float32 and y2.dtype == torch.int64
    assert torch.equal(X, X2) and torch.equal(y, y2)
    assert meta == {**META, "n_samples": 257, "dim": 3, "nodecore_version": __version__,
                    "schema_version": SCHEMA_VERSION}


def test_file_schema_and_metadata(written: Path) -> None:
    schema = pq.read_schema(written)
    assert schema.names == ["x0", "x1", "x2", "label"]
    assert [f.type for f in schema] == [pa.float32()] * 3 + [pa.int64()]
    assert json.loads(schema.metadata[b"nodecore"])["seed"] == 5


def test_round_trip_converts_other_dtypes(tmp_path: Path) -> None:
    X = torch.tensor([[1.5, -0.0], [2.25, 3.0]], dtype=torch.float64)
    y = torch.tensor([3, 1], dtype=torch.int32)
    X2, y2, _ = read_dataset(write_dataset(tmp_path / "d.parquet", X, y, metadata=META))
    assert torch.equal(X2, X.float()) and torch.equal(y2, y.long())
    assert torch.signbit(X2[0, 1])


def test_write_returns_path_and_overwrites(tmp_path: Path, data) -> None:
    X, y = data
    target = str(tmp_path / "ds.parquet")
    assert write_dataset(target, X, y, metadata=META) == Path(target)
    write_dataset(target, X[:10], y[:10], metadata=META)
    assert read_dataset(target)[0].shape == (10, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["ds.parquet"]


@pytest.mark.parametrize(
    ("X", "y", "match"),
    [
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), "2-D floating"),
        (torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, dtype=torch.long), "2-D floating"),
        (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), "non-empty"),
        (torch.zeros(4, 2), torch.zeros(4), "1-D integer"),
        (torch.zeros(4, 2), torch.zeros(4, dtype=torch.bool), "1-D integer"),
        (torch.zeros(4, 2), torch.zeros(4, 1, dtype=torch.long), "1-D integer"),
        (torch.zeros(4, 2), torch.zeros(3, dtype=torch.long), "same length"),
        (torch.tensor([[0.0, float("nan")]]), torch.zeros(1, dtype=torch.long), "finite"),
        (torch.tensor([[1e300]], dtype=torch.float64), torch.zeros(1, dtype=torch.long), "finite"),
        ([[0.0]], torch.zeros(1, dtype=torch.long), "torch.Tensor"),
    ],
)
def test_write_rejects_bad_arrays(tmp_path: Path, X, y, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_dataset(tmp_path / "bad.parquet", X, y, metadata=META)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"params": {}, "seed": 1}, "dataset_type"),
        ({**META, "dim": 3}, "set by write_dataset"),
        ({**META, "params": {"x": float("nan")}}, "JSON"),
        ({**META, "params": {"x": object()}}, "JSON"),
    ],
)
def test_write_rejects_bad_metadata(tmp_path: Path, data, meta: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_dataset(tmp_path / "bad.parquet", *data, metadata=meta)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_nothing(tmp_path: Path, data, monkeypatch) -> None:
    def explode(table, where, **kwargs):
        where.write(b"PAR1 partial bytes")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(pq, "write_table", explode)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_dataset(tmp_path / "ds.parquet", *data, metadata=META)
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_old_file(written: Path, data, monkeypatch) -> None:
    before = file_digest(written)
    monkeypatch.setattr(dataset_io.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("x")))
    with pytest.raises(OSError):
        write_dataset(written, data[0][:5], data[1][:5], metadata=META)
    assert file_digest(written) == before
    assert [p.name for p in written.parent.iterdir()] == [written.name]


def test_not_parquet_is_format_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.parquet"
    path.write_text("definitely not parquet, just some text")
    with pytest.raises(DatasetFormatError, match="expected a Parquet file") as info:
        read_dataset(path)
    assert str(path) in str(info.value) and isinstance(info.value, ValueError)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_dataset(tmp_path / "absent.parquet")


F32, I64 = pa.float32(), pa.int64()


@pytest.mark.parametrize(
    ("columns", "found"),
    [
        ({"x0": pa.array([1.0], pa.float64()), "label": pa.array([1], I64)}, "'float64'"),
        ({"x0": pa.array([1.0], F32), "label": pa.array([1], pa.int32())}, "'int32'"),
        ({"x0": pa.array([1.0], F32)}, "found \\[\\('x0', 'float32'\\)\\]"),
        ({"label": pa.array([1], I64)}, "found \\[\\('label'"),
        ({"x0": pa.array([1.0], F32), "x2": pa.array([1.0], F32), "label": pa.array([1], I64)},
         "'x2'"),
        ({"x0": pa.array([1.0], F32), "extra": pa.array([1.0], F32), "label": pa.array([1], I64)},
         "'extra'"),
        ({"label": pa.array([1], I64), "x0": pa.array([1.0], F32)}, "found \\[\\('label'"),
    ],
)
def test_wrong_columns_are_format_errors(tmp_path: Path, columns: dict, found: str) -> None:
    path = _write_table(tmp_path / "bad.parquet", columns, _good_meta(1, 1))
    with pytest.raises(DatasetFormatError, match=f"expected columns .*{found}") as info:
        read_dataset(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        (None, "expected file metadata key 'nodecore', found none"),
        ([1, 2], "JSON object"),
        ({**_good_meta(1, 1), "schema_version": 99}, "schema_version 1, found 99"),
        (_good_meta(2, 1), "n_samples=2"),
    ],
)
def test_bad_metadata_is_format_error(tmp_path: Path, meta, match: str) -> None:
    columns = {"x0": pa.array([1.0], F32), "label": pa.array([1], I64)}
    with pytest.raises(DatasetFormatError, match=match):
        read_dataset(_write_table(tmp_path / "bad.parquet", columns, meta))


def test_nulls_are_format_errors(tmp_path: Path) -> None:
    columns = {"x0": pa.array([1.0, None], F32), "label": pa.array([1, 0], I64)}
    with pytest.raises(DatasetFormatError, match="null"):
        read_dataset(_write_table(tmp_path / "bad.parquet", columns, _good_meta(2, 1)))


def test_file_digest_is_sha256_of_bytes(written: Path, tmp_path: Path, data) -> None:
    assert file_digest(written) == hashlib.sha256(written.read_bytes()).hexdigest()
    again = write_dataset(tmp_path / "again.parquet", *data, metadata=META)
    assert file_digest(again) == file_digest(written)
    other = write_dataset(tmp_path / "other.parquet", *data, metadata={**META, "seed": 6})
    assert file_digest(other) != file_digest(written)


def test_content_digest_tracks_data_only(data) -> None:
    X, y = data
    assert content_digest(X, y) == content_digest(X.double(), y.int())
    assert content_digest(X, y) != content_digest(X[:-1], y[:-1])
    flipped = y.clone()
    flipped[0] = 1 - flipped[0]
    assert content_digest(X, y) != content_digest(X, flipped)
