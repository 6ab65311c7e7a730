"""Clear errors for common mistakes: each names the bad value or file and is of a type the pipeline can act on.

One section per case of the reliability issue: state shapes, class labels, damaged Parquet files, checkpoints
that do not fit their config, NaN/Inf read back from a dataset, and constant-step blow-ups.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from nodecore import (
    Augmenter,
    CorruptFileError,
    DatasetFormatError,
    DEQClassifier,
    DepthCat,
    InputShapeError,
    MLPFieldSpec,
    NeuralODE,
    ODEClassifier,
    StabilityWarning,
    accuracy,
    build_field,
    evaluate,
    load_model,
    load_weights,
    model_config,
    read_dataset,
    save_checkpoint,
    train,
    write_dataset,
)
from nodecore.checkpoints import classifier_config, build_model
from nodecore.trajectory_io import TrajectoryFormatError, read_trajectory, write_trajectory

T_SPAN = torch.linspace(0.0, 1.0, 3)


def _mlp(dim_in: int, dim_out: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(dim_in, 16), nn.Tanh(), nn.Linear(16, dim_out))


# --------------------------------------------------------------------------------------------------
# 1. A state the vector field does not take
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sensitivity", ["autograd", "adjoint"])
def test_state_of_the_wrong_width_names_its_shape_and_the_width_the_field_takes(sensitivity: str) -> None:
    model = NeuralODE(_mlp(2, 2), sensitivity=sensitivity)
    with pytest.raises(InputShapeError) as info:
        model(torch.randn(4, 3), T_SPAN)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, RuntimeError)  # torchdyn code catching torch's own error still catches it
    assert "the state x of shape (4, 3)" in message
    assert "first layer '0' (Linear) takes 2 input features" in message and "has 3" in message
    assert isinstance(info.value.__cause__, RuntimeError)  # torch's own error is kept


def test_a_field_without_declared_widths_still_names_the_state_shape() -> None:
    weight = torch.ones(2, 2)
    with pytest.raises(InputShapeError, match=re.escape("the state x of shape (5, 3)")) as info:
        NeuralODE(lambda x: x @ weight)(torch.randn(5, 3), T_SPAN)
    assert "takes" not in str(info.value)  # nothing is claimed about a width the field does not declare


def test_no_width_is_claimed_when_a_layer_before_the_first_linear_changes_it() -> None:
    field = nn.Sequential(DepthCat(1), nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    NeuralODE(field)(torch.randn(4, 2), T_SPAN)  # the right width works
    with pytest.raises(InputShapeError, match=re.escape("(4, 3)")) as info:
        NeuralODE(field)(torch.randn(4, 3), T_SPAN)
    assert "takes" not in str(info.value)


@pytest.mark.parametrize("error", [RuntimeError("boom"), torch.OutOfMemoryError("CUDA out of memory; size 2 GiB")])
def test_other_runtime_errors_of_the_field_pass_through_unchanged(error: RuntimeError) -> None:
    class Failing(nn.Module):
        def forward(self, x):
            raise error

    with pytest.raises(type(error)) as info:
        NeuralODE(Failing())(torch.randn(4, 2), T_SPAN)
    assert info.value is error


def test_augmented_classifier_names_the_input_and_the_augmented_state() -> None:
    model = ODEClassifier(NeuralODE(_mlp(5, 5)), nn.Linear(5, 2), augmenter=Augmenter(1, 3))
    with pytest.raises(InputShapeError) as info:
        model(torch.randn(4, 3), T_SPAN)
    message = str(info.value)
    assert "(4, 6)" in message and "input x of shape (4, 3)" in message and "takes 5 input features" in message


def test_classifier_readout_that_does_not_take_the_state_is_named() -> None:
    model = ODEClassifier(NeuralODE(_mlp(2, 2)), nn.Linear(3, 2))
    with pytest.raises(InputShapeError) as info:
        model(torch.randn(4, 2), T_SPAN)
    message = str(info.value)
    assert message.startswith("the readout") and "(4, 2)" in message and "takes 3 input features" in message


def test_deq_classifier_names_the_input_shape_and_the_cell_width() -> None:
    with pytest.raises(InputShapeError) as info:
        DEQClassifier(2, 8, 2)(torch.randn(4, 3))
    message = str(info.value)
    assert "the input x of shape (4, 3)" in message and "'inject' (Linear) takes 2 input features" in message


# --------------------------------------------------------------------------------------------------
# 2. Class labels
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def points() -> torch.Tensor:
    return torch.randn(8, 2, generator=torch.Generator().manual_seed(0))


def _untouched(model: nn.Module, before: list[torch.Tensor]) -> bool:
    return all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize(
    ("labels", "named"),
    [
        (torch.zeros(8), ["dtype torch.float32", "y.long()"]),
        (torch.tensor([0, 1, 5, 1, 0, 5, 1, 0]), ["2 outputs", "0 .. 1", "2 label(s)", ": 5", "index 2"]),
        (torch.tensor([0, -1, 1, 1, 0, 1, 0, -3]), [">= 0", "2 label(s)", "-3, -1", "index 1"]),
    ],
    ids=["float", "too-large", "negative"],
)
def test_bad_labels_are_refused_before_training_starts(points, labels, named) -> None:
    model = NeuralODE(_mlp(2, 2), solver="rk4")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError) as info:
        train(model, points, labels, t_span=T_SPAN, epochs=2)
    assert all(part in str(info.value) for part in named), str(info.value)
    assert _untouched(model, before)  # no optimizer step was taken


def test_evaluation_and_accuracy_refuse_labels_the_model_has_no_output_for(points) -> None:
    model, labels = DEQClassifier(2, 8, 3), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    for measure in (evaluate, accuracy):
        with pytest.raises(ValueError, match=r"3 outputs, so labels must be in 0 \.\. 2.*: 3 \(first at index 3\)"):
            measure(model, points, labels, t_span=T_SPAN)


def test_integer_labels_of_any_width_train_like_int64(points) -> None:
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    runs = []
    for dtype in (torch.int64, torch.int32):
        model = NeuralODE(_mlp(2, 2), solver="rk4")
        train(model, points, labels.to(dtype), t_span=T_SPAN, epochs=2)
        runs.append(list(model.parameters()))
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------------------------------
# 3. Damaged Parquet files
# --------------------------------------------------------------------------------------------------

META = {"dataset_type": "moons", "params": {}, "seed": 0}


@pytest.fixture
def dataset_file(tmp_path: Path) -> Path:
    X = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    return write_dataset(tmp_path / "train.parquet", X, torch.arange(64) % 2, metadata=META)


def _assert_corrupt(info: pytest.ExceptionInfo, path: Path) -> None:
    assert isinstance(info.value, ValueError) and not isinstance(info.value, OSError)  # permanent, not retried
    assert str(path) in str(info.value) and "damaged" in str(info.value)
    assert info.value.path == path and info.value.__cause__ is not None


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncated_dataset_is_a_corrupt_file_error(dataset_file: Path, keep: float) -> None:
    data = dataset_file.read_bytes()
    dataset_file.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CorruptFileError) as info:
        read_dataset(dataset_file)
    _assert_corrupt(info, dataset_file)


@pytest.mark.parametrize("column", [0, 1, 2])
def test_a_flipped_byte_in_the_data_is_caught_by_the_page_checksums(dataset_file: Path, column: int) -> None:
    chunk = pq.ParquetFile(dataset_file).metadata.row_group(0).column(column)
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    at = start + chunk.total_compressed_size - 1  # the last byte of the column chunk: page data, not a header
    data = bytearray(dataset_file.read_bytes())
    data[at] ^= 0x01
    dataset_file.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError) as info:
        read_dataset(dataset_file)
    _assert_corrupt(info, dataset_file)


def test_truncated_trajectory_is_a_corrupt_file_error(tmp_path: Path) -> None:
    path = write_trajectory(tmp_path / "traj.parquet", torch.linspace(0, 1, 3), torch.randn(3, 4, 2),
                            torch.zeros(4, dtype=torch.long), metadata={})
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(CorruptFileError) as info:
        read_trajectory(path)
    _assert_corrupt(info, path)


def test_a_disk_error_stays_an_os_error(dataset_file: Path, monkeypatch) -> None:
    def unreadable(self):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    with pytest.raises(OSError, match="Input/output error"):  # transient: the pipeline may retry it
        read_dataset(dataset_file)


def test_corrupt_file_error_survives_pickling(dataset_file: Path) -> None:
    dataset_file.write_bytes(dataset_file.read_bytes()[:100])
    with pytest.raises(CorruptFileError) as info:
        read_dataset(dataset_file)
    again = pickle.loads(pickle.dumps(info.value))  # Prefect stores a task's exception
    assert str(again) == str(info.value) and again.path == dataset_file


# --------------------------------------------------------------------------------------------------
# 4. Checkpoints whose weights do not fit their config
# --------------------------------------------------------------------------------------------------


def test_weights_of_another_width_name_the_file_and_each_parameter(tmp_path: Path) -> None:
    trained = NeuralODE(build_field(MLPFieldSpec(dim=3)))
    config = model_config(MLPFieldSpec(dim=3), trained) | {"field": MLPFieldSpec(dim=2).to_dict()}  # edited
    path = save_checkpoint(tmp_path / "m.pt", trained, config=config)
    with pytest.raises(ValueError) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message
    assert "vf.vf.0.weight is [16, 3] in the file but [16, 2] in the model" in message
    assert "vf.vf.2.bias is [3] in the file but [2] in the model" in message
    assert "size mismatch" not in message  # not torch's bare message


def test_a_spec_that_is_not_the_models_field_is_refused_before_anything_is_saved() -> None:
    """A ReLU field saved with the default (Tanh) spec would reload as another model, silently."""
    relu = NeuralODE(nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2)))
    with pytest.raises(ValueError, match=r"the spec describes the field Linear\(in_features=2, out_features=16, "
                                         r"bias=True\) -> Tanh\(\) -> .* but the model's field is .*ReLU\(\)"):
        model_config(MLPFieldSpec(dim=2, hidden=16), relu)
    state = torch.random.get_rng_state()
    assert model_config(MLPFieldSpec(dim=2, hidden=16, activation="relu"), relu)["field"]["activation"] == "relu"
    assert torch.equal(torch.random.get_rng_state(), state)  # checking the spec draws no random numbers of yours

    class Residual(nn.Sequential):  # the same layers, another forward: it would reload as a plain Sequential
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + super().forward(x)

    for other in (Residual(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)),
                  nn.Sequential(nn.Sequential(nn.Linear(2, 16), nn.Tanh()), nn.Linear(16, 2))):
        with pytest.raises(ValueError, match="would reload another model"):
            model_config(MLPFieldSpec(dim=2, hidden=16), NeuralODE(other))
    # the same numbers written another way are the same model
    softplus = NeuralODE(nn.Sequential(nn.Linear(2, 16), nn.Softplus(beta=1, threshold=20), nn.Linear(16, 2)))
    assert model_config(MLPFieldSpec(dim=2, hidden=16, activation="softplus"), softplus)["kind"] == "node"


def test_a_checkpoint_whose_config_describes_no_model_names_the_file_and_what_is_missing(tmp_path: Path) -> None:
    model = NeuralODE(build_field(MLPFieldSpec(dim=2)))
    path = save_checkpoint(tmp_path / "m.pt", model, config={"solver": "rk4"})
    with pytest.raises(ValueError, match=re.escape(str(path)) + r": the config does not describe a 'node' model: it "
                                         r"has no 'field', 'ode' .*\{'solver'\}.*load_state_dict"):
        load_model(path)


def test_missing_and_unexpected_weights_are_listed(tmp_path: Path) -> None:
    trained = build_model(classifier_config("deq", dim=2, n_classes=2, hidden=8))
    config = classifier_config("anode", dim=2, n_classes=2, augment_dims=1)
    path = save_checkpoint(tmp_path / "m.pt", trained, config=config)
    with pytest.raises(ValueError, match=re.escape(str(path))) as info:
        load_model(path)
    message = str(info.value)
    assert "the ODEClassifier its config describes" in message
    assert "missing from the file: node.vf.vf.0.weight" in message and "in the file but not in the model: 0.f.weight" in message


def test_load_weights_checks_before_loading_and_loads_what_fits() -> None:
    source, target = NeuralODE(build_field(MLPFieldSpec(hidden=8))), NeuralODE(build_field(MLPFieldSpec(hidden=4)))
    before = [p.detach().clone() for p in target.parameters()]
    with pytest.raises(ValueError, match=r"^resume\.pt: .*vf\.vf\.0\.weight is \[8, 2\] in the file but \[4, 2\]"):
        load_weights(target, source.state_dict(), source="resume.pt")
    assert _untouched(target, before)  # nothing was half-loaded
    twin = NeuralODE(build_field(MLPFieldSpec(hidden=8)))
    assert load_weights(twin, source.state_dict(), source="resume.pt") is twin
    assert all(torch.equal(a, b) for a, b in zip(twin.parameters(), source.parameters()))


# --------------------------------------------------------------------------------------------------
# 5. NaN / Inf read back from a file
# --------------------------------------------------------------------------------------------------


def _poke(path: Path, column: str, values: dict[int, float]) -> None:
    """Overwrite some values of a float column, keeping the file's schema and metadata."""
    table = pq.read_table(path)
    data = table.column(column).to_numpy().copy()
    for row, value in values.items():
        data[row] = value
    index = table.schema.get_field_index(column)
    table = table.set_column(index, table.schema.field(index), pa.array(data, table.schema.field(index).type))
    pq.write_table(table.replace_schema_metadata(table.schema.metadata), path)


def test_nan_and_inf_features_are_refused_on_read(dataset_file: Path) -> None:
    _poke(dataset_file, "x1", {9: float("nan"), 40: float("inf")})
    _poke(dataset_file, "x0", {12: float("-inf")})
    with pytest.raises(DatasetFormatError) as info:
        read_dataset(dataset_file)
    message = str(info.value)
    assert str(dataset_file) in message and "3 NaN/Inf value(s)" in message and "row 9, column 'x1'" in message


def test_nan_states_are_refused_when_reading_a_trajectory(tmp_path: Path) -> None:
    path = write_trajectory(tmp_path / "traj.parquet", torch.linspace(0, 1, 3), torch.randn(3, 4, 2),
                            torch.zeros(4, dtype=torch.long), metadata={})
    _poke(path, "z1", {5: float("nan")})
    with pytest.raises(TrajectoryFormatError, match=re.escape(f"{path}: ") + r".*1 NaN/Inf value\(s\).*row 5, column 'z1'"):
        read_trajectory(path)


# --------------------------------------------------------------------------------------------------
# 6. Constant-step blow-ups
# --------------------------------------------------------------------------------------------------


class Linear1D(nn.Module):
    """``dx/dt = rate * x``."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rate * x


@pytest.mark.parametrize(
    ("options", "step", "dtype"),
    [
        ({"solver": "euler"}, "0.25", torch.float32),  # steps on t_span: the example
        ({"solver": "euler", "step_size": 0.125}, "0.125", torch.float32),
        ({"solver": "dopri5", "step_size": 0.25}, "0.25", torch.float64),  # adaptive solver pinned to a step
    ],
)
def test_a_stiff_field_with_too_large_a_step_warns(options: dict, step: str, dtype: torch.dtype) -> None:
    model = NeuralODE(Linear1D(-1000.0), **options)
    with pytest.warns(StabilityWarning) as record:
        trajectory = model.trajectory(torch.ones(2, 2, dtype=dtype), torch.linspace(0, 1, 5, dtype=dtype))
    message = str(record[0].message)
    assert f"'{options['solver']}'" in message and f"step size {step}" in message
    assert "adaptive solver" in message and "smaller step_size" in message
    assert torch.isfinite(trajectory).all() and trajectory[-1].abs().min() > 1e8  # returned as it is


@pytest.mark.parametrize(("rate", "options"), [(-1000.0, {"solver": "dopri5"}),   # adaptive: accurate, no warning
                                               (-1.0, {"solver": "euler"}),       # stable step
                                               (15.0, {"solver": "rk4", "step_size": 0.01})])  # genuine e^15 growth
def test_no_warning_without_a_blow_up(rate: float, options: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", StabilityWarning)
        NeuralODE(Linear1D(rate), **options).trajectory(torch.ones(2, 2), torch.linspace(0, 1, 5))


def test_stability_warning_is_a_runtime_warning() -> None:
    assert issubclass(StabilityWarning, RuntimeWarning)
