"""Tests for nodecore.trajectory_io: round trip, schema checks, shape validation, atomic writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nodecore import trajectory_io
from nodecore._version import __version__
from nodecore.dataset_io import write_dataset
from nodecore.files import file_digest
from nodecore.trajectory_io import SCHEMA_VERSION, TrajectoryFormatError, read_trajectory, write_trajectory

META = {"solver": "dopri5", "atol": 1e-3, "checkpoint": "abc123"}
T, B, D = 7, 5, 3


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    t_eval = torch.linspace(0.0, 1.0, T, dtype=torch.float64) ** 2  # not float32-representable
    trajectory = torch.randn(T, B, D, generator=generator)
    labels = torch.tensor([0, 1, 1, 0, 7])
    return t_eval, trajectory, labels


@pytest.fixture
def written(tmp_path: Path, data) -> Path:
    return write_trajectory(tmp_path / "traj.parquet", *data, metadata=META)


def _rewrite(source: Path, target: Path, edit) -> Path:
    """Write ``edit(table)`` of a valid trajectory file to ``target``, keeping its metadata."""
    table = pq.read_table(source)
    pq.write_table(edit(table).replace_schema_metadata(table.schema.metadata), target)
    return target


def test_round_trip_is_exact(written: Path, data) -> None:
    t_eval, trajectory, labels = data
    t2, z2, y2, meta = read_trajectory(written)
    assert (t2.dtype, z2.dtype, y2.dtype) == (torch.float64, torch.float32, torch.int64)
    assert z2.shape == (T, B, D)
    assert torch.equal(t2, t_eval) and torch.equal(z2, trajectory) and torch.equal(y2, labels)
    assert meta == {**META, "kind": "trajectory", "T": T, "B": B, "D": D,
                    "nodecore_version": __version__, "schema_version": SCHEMA_VERSION}


def test_file_layout_is_long_format(written: Path, data) -> None:
    t_eval, trajectory, labels = data
    table = pq.read_table(written)
    assert table.schema.names == ["t_index", "t", "sample", "label", "z0", "z1", "z2"]
    assert [f.type for f in table.schema] == [pa.int32(), pa.float64(), pa.int64(), pa.int64()] + [pa.float32()] * 3
    assert table.num_rows == T * B
    row = 2 * B + 3  # depth 2, sample 3
    assert table.column("t_index")[row].as_py() == 2 and table.column("sample")[row].as_py() == 3
    assert table.column("t")[row].as_py() == t_eval[2].item()
    assert table.column("label")[row].as_py() == labels[3].item()
    assert table.column("z1")[row].as_py() == trajectory[2, 3, 1].item()
    assert json.loads(table.schema.metadata[b"nodecore"])["solver"] == "dopri5"


def test_round_trip_converts_other_dtypes(tmp_path: Path) -> None:
    t_eval = torch.tensor([0.0, 0.5], dtype=torch.float32)
    trajectory = torch.tensor([[[1.5, -0.0]], [[2.25, 3.0]]], dtype=torch.float64)
    labels = torch.tensor([3], dtype=torch.int32)
    t2, z2, y2, _ = read_trajectory(write_trajectory(tmp_path / "t.parquet", t_eval, trajectory, labels, metadata={}))
    assert torch.equal(t2, t_eval.double()) and torch.equal(z2, trajectory.float()) and torch.equal(y2, labels.long())
    assert torch.signbit(z2[0, 0, 1])


def test_rows_in_any_order_are_sorted(written: Path, tmp_path: Path, data) -> None:
    shuffled = _rewrite(written, tmp_path / "shuffled.parquet", lambda t: t.take(torch.randperm(T * B).numpy()))
    t2, z2, y2, _ = read_trajectory(shuffled)
    assert torch.equal(t2, data[0]) and torch.equal(z2, data[1]) and torch.equal(y2, data[2])


def test_write_returns_path_and_overwrites(tmp_path: Path, data) -> None:
    t_eval, trajectory, labels = data
    target = str(tmp_path / "traj.parquet")
    assert write_trajectory(target, t_eval, trajectory, labels, metadata=META) == Path(target)
    write_trajectory(target, t_eval[:2], trajectory[:2, :1], labels[:1], metadata=META)
    assert read_trajectory(target)[1].shape == (2, 1, D)
    assert [p.name for p in tmp_path.iterdir()] == ["traj.parquet"]


def test_importing_does_not_import_prefect() -> None:
    code = "import sys, nodecore.trajectory_io; assert 'prefect' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


_t, _z, _y = torch.zeros(3), torch.zeros(3, 2, 4), torch.zeros(2, dtype=torch.long)


@pytest.mark.parametrize(
    ("t_eval", "trajectory", "labels", "match"),
    [
        (_t, torch.zeros(3, 2), _y, r"3-D floating tensor \[T, B, D\], got torch.float32 \(3, 2\)"),
        (_t, torch.zeros(3, 2, 4, dtype=torch.long), _y, "3-D floating"),
        (_t[:0], _z[:0], _y, "non-empty 1-D floating"),
        (_t, torch.zeros(3, 0, 4), _y[:0], "non-empty 3-D"),
        (_t, torch.zeros(3, 2, 0), _y, "non-empty 3-D"),
        (torch.zeros(3, 1), _z, _y, r"1-D floating tensor \[T\]"),
        (torch.arange(3), _z, _y, "1-D floating"),
        (torch.zeros(4), _z, _y, r"T = len\(t_eval\) = 4, got T = 3"),
        (_t, _z, torch.zeros(3, dtype=torch.long), r"B = len\(labels\) = 3, got B = 2"),
        (_t, _z, torch.zeros(2), r"1-D integer tensor \[B\]"),
        (_t, _z, torch.zeros(2, dtype=torch.bool), "1-D integer"),
        (_t, _z, torch.zeros(2, 1, dtype=torch.long), "1-D integer"),
        (torch.tensor([0.0, 1.0, float("inf")]), _z, _y, "t_eval must contain only finite"),
        (_t, torch.full((3, 2, 4), float("nan")), _y, "trajectory must contain only finite"),
        (_t, torch.full((3, 2, 4), 1e300, dtype=torch.float64), _y, "after conversion to float32"),
        (_t.tolist(), _z, _y, "t_eval=list"),
    ],
)
def test_write_rejects_bad_arrays(tmp_path: Path, t_eval, trajectory, labels, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_trajectory(tmp_path / "bad.parquet", t_eval, trajectory, labels, metadata=META)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ([("solver", "rk4")], "must be a dict"),
        ({**META, "T": 3}, "set by write_trajectory"),
        ({**META, "kind": "dataset"}, "set by write_trajectory"),
        ({**META, "atol": float("nan")}, "JSON"),
        ({**META, "solver": object()}, "JSON"),
    ],
)
def test_write_rejects_bad_metadata(tmp_path: Path, data, meta, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_trajectory(tmp_path / "bad.parquet", *data, metadata=meta)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_nothing(tmp_path: Path, data, monkeypatch) -> None:
    def explode(table, where, **kwargs):
        where.write(b"PAR1 partial bytes")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(pq, "write_table", explode)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_trajectory(tmp_path / "traj.parquet", *data, metadata=META)
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_old_file(written: Path, data, monkeypatch) -> None:
    before = file_digest(written)
    monkeypatch.setattr(pq, "write_table", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        write_trajectory(written, data[0][:2], data[1][:2], data[2], metadata=META)
    assert file_digest(written) == before
    assert [p.name for p in written.parent.iterdir()] == [written.name]


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_trajectory(tmp_path / "absent.parquet")


def test_not_parquet_is_format_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.parquet"
    path.write_text("definitely not parquet, just some text")
    with pytest.raises(TrajectoryFormatError, match="expected a Parquet file") as info:
        read_trajectory(path)
    assert str(path) in str(info.value) and isinstance(info.value, ValueError)


def test_dataset_file_is_format_error(tmp_path: Path) -> None:
    X, y = torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)
    path = write_dataset(tmp_path / "ds.parquet", X, y, metadata={"dataset_type": "moons", "params": {}, "seed": 0})
    with pytest.raises(TrajectoryFormatError, match="expected kind 'trajectory' in metadata, found None") as info:
        read_trajectory(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t.drop_columns(["z1"]), r"expected columns .*'z1'.* found (?!.*'z1')"),
        (lambda t: t.drop_columns(["label"]), r"expected columns .*'label'.* found (?!.*'label')"),
        (lambda t: t.append_column("extra", pa.array([0.0] * (T * B), pa.float32())), "found .*'extra'"),
        (lambda t: t.set_column(1, "t", t.column("t").cast(pa.float32())), r"found .*\('t', 'float32'\)"),
        (lambda t: t.set_column(0, "t_index", t.column("t_index").cast(pa.int64())), r"found .*'t_index', 'int64'"),
        (lambda t: t.select(["t", "t_index", "sample", "label", "z0", "z1", "z2"]), r"found \[\('t', 'float64'\)"),
        (lambda t: t.slice(0, T * B - 1), rf"expected T\*B = {T}\*{B} = {T * B} rows from metadata, found {T * B - 1}"),
        (lambda t: t.set_column(2, "sample", pa.array([0] * (T * B), pa.int64())), "exactly once"),
        (lambda t: t.set_column(0, "t_index", pa.array([T] * (T * B), pa.int32())), "exactly once"),
        (lambda t: t.set_column(1, "t", pa.array(range(T * B), pa.float64())), "one value of t per t_index"),
        (lambda t: t.set_column(3, "label", pa.array(range(T * B), pa.int64())), "one label per sample"),
        (lambda t: t.set_column(4, "z0", pa.array([None] * (T * B), pa.float32())), "null"),
    ],
)
def test_wrong_table_is_format_error(written: Path, tmp_path: Path, edit, match: str) -> None:
    path = _rewrite(written, tmp_path / "bad.parquet", edit)
    with pytest.raises(TrajectoryFormatError, match=match) as info:
        read_trajectory(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (None, "expected file metadata key 'nodecore', found none"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object, found list"),
        ({"kind": "dataset"}, "expected kind 'trajectory' in metadata, found 'dataset'"),
        ({"schema_version": 99}, "expected schema_version 1, found 99"),
        ({"T": 0}, "'T' to be a positive integer, found 0"),
        ({"D": "3"}, "'D' to be a positive integer, found '3'"),
        ({"D": 2}, "expected columns"),
        ({"B": B + 1}, "rows from metadata"),
    ],
)
def test_bad_metadata_is_format_error(written: Path, tmp_path: Path, change, match: str) -> None:
    table = pq.read_table(written)
    if isinstance(change, dict):
        raw = json.dumps({**json.loads(table.schema.metadata[b"nodecore"]), **change}).encode()
    else:
        raw = change
    path = tmp_path / "bad.parquet"
    pq.write_table(table.replace_schema_metadata(None if raw is None else {b"nodecore": raw}), path)
    with pytest.raises(TrajectoryFormatError, match=match) as info:
        read_trajectory(path)
    assert str(path) in str(info.value)


def test_module_surface() -> None:
    assert issubclass(TrajectoryFormatError, ValueError)
    assert set(trajectory_io.__all__) >= {"read_trajectory", "write_trajectory", "TrajectoryFormatError"}
