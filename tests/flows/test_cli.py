"""Tests for flows.cli: pydantic-settings' CLI over the config, with the option spellings users have."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import pytest
from pydantic import BaseModel, ConfigDict, Field

from flows.cli import HINT, check_writable_folder, cli_source, parse_config
from nodecore.datasets import DATASET_TYPES
from nodecore.solvers import SOLVER_NAMES
from tasks.config import PipelineConfig


def _leaf_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf path of ``model``, found independently of flows.cli."""
    paths = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            paths += _leaf_paths(field.annotation, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def _error(capsys: pytest.CaptureFixture[str], model: type[BaseModel], argv: list[str]) -> str:
    """Run parse_config expecting exit status 2; return what it wrote to stderr."""
    with pytest.raises(SystemExit) as info:
        parse_config(model, argv, prog="train_flow")
    assert info.value.code == 2
    return capsys.readouterr().err


# --- help ----------------------------------------------------------------------------------------------


def test_help_lists_every_field_with_its_description_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_config(PipelineConfig, ["--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    paths = _leaf_paths(PipelineConfig)
    assert len(paths) > 30 and ("training", "epochs") in paths and ("solvers",) in paths
    for path in paths:
        assert f"--{'.'.join(path)} " in help_text or f"--{'.'.join(path)}," in help_text, path
    flat = " ".join(help_text.split())  # undo argparse's line wrapping
    assert "--no-model.depth_variant" in flat and "--no-run.refresh" in flat
    assert "training epochs (default: 200)" in flat
    assert "grid axis: solvers (default: ['dopri5', 'rk4', 'tsit5'])" in flat
    assert "mini-batch size; full batch if unset (default: None)" in flat
    assert "{" + ",".join(SOLVER_NAMES) + "}" in flat and "{" + ",".join(DATASET_TYPES) + "}" in flat
    assert "Everything one run of the training flow needs." in flat


# --- values --------------------------------------------------------------------------------------------


def test_no_options_gives_the_default_config() -> None:
    assert parse_config(PipelineConfig, []) == PipelineConfig()


def test_the_environment_does_not_reach_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydantic-settings reads env vars by default; the command line is the only source here."""
    monkeypatch.setenv("solvers", '["euler"]')
    monkeypatch.setenv("training", '{"epochs": 1}')
    assert parse_config(PipelineConfig, []) == PipelineConfig()


def test_overrides_land_in_the_config_and_the_rest_keeps_its_defaults() -> None:
    config = parse_config(PipelineConfig, [
        "--training.epochs", "3",
        "--training.lr=0.2",
        "--model.depth_variant",
        "--no-run.refresh",
        "--solvers", "rk4", "euler",
        "--devices", "cpu", "cuda:1",
        "--solver.step_size", "0.05",
        "--training.batch_size", "none",
        "--dataset.dataset_type", "spirals",
        "--dataset.noise", "0",
        "--run.artifacts_dir", "/tmp/x y",
    ])
    assert type(config) is PipelineConfig
    assert config.training.epochs == 3 and config.training.lr == 0.2
    assert config.model.depth_variant is True and config.run.refresh is False
    assert config.solvers == ["rk4", "euler"] and config.devices == ["cpu", "cuda:1"]
    assert config.solver.step_size == 0.05 and config.training.batch_size is None
    assert config.dataset.dataset_type == "spirals" and config.run.artifacts_dir == "/tmp/x y"
    assert isinstance(config.dataset.noise, float) and config.dataset.noise == 0.0
    defaults = PipelineConfig()
    assert config.training.checkpoint_every == defaults.training.checkpoint_every
    assert config.dataset.model_dump(exclude={"dataset_type", "noise"}) == defaults.dataset.model_dump(
        exclude={"dataset_type", "noise"})
    assert config.output == defaults.output


@pytest.mark.parametrize("argv", [
    ["--solvers", "rk4", "euler"],
    ["--solvers", "rk4,euler"],
    ["--solvers=rk4,euler"],
    ["--solvers", '["rk4", "euler"]'],
    ["--solvers", "rk4", "--solvers", "euler"],
])
def test_every_list_spelling_gives_the_same_list(argv: list[str]) -> None:
    assert parse_config(PipelineConfig, argv).solvers == ["rk4", "euler"]


def test_seeds_take_the_list_spellings_and_default_to_none_swept() -> None:
    assert parse_config(PipelineConfig, ["--seeds", "0", "1", "2"]).seeds == [0, 1, 2]
    assert parse_config(PipelineConfig, ["--seeds", "3,4"]).grid_seeds() == [3, 4]
    assert parse_config(PipelineConfig, ["--model.init_seed", "9"]).grid_seeds() == [9]


def test_none_in_any_case_resets_an_optional_field() -> None:
    assert parse_config(PipelineConfig, ["--training.batch_size", "8"]).training.batch_size == 8
    config = parse_config(PipelineConfig, ["--training.batch_size", "None", "--run.dask_address", "NONE"])
    assert config.training.batch_size is None and config.run.dask_address is None


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--solvers", "rk4", "foo"], ["--solvers: ", "(got 'foo')", *map(repr, SOLVER_NAMES)]),
        (["--training.epochs", "-1"], ["--training.epochs: ", "greater than or equal to 0", "(got '-1')"]),
        (["--training.epochs", "many"], ["--training.epochs: ", "valid integer", "(got 'many')"]),
        (["--dataset.dataset_type", "blobs"], ["--dataset.dataset_type: ", "(got 'blobs')", *map(repr, DATASET_TYPES)]),
        (["--devices", "gpu"], ["--devices: ", "unknown device 'gpu'", "'cuda:N'"]),
        (["--training.epoch", "3"], ["unrecognized arguments: --training.epoch 3"]),
        (["--model.depth_variant", "yes"], ["unrecognized arguments: yes"]),
        (["--seeds", "0", "1", "0"], ["--seeds: duplicate entries in [0, 1, 0]"]),
        (["--seeds", "1", "4294967296"], ["--seeds: ", "less than or equal to 4294967295", "(got 4294967296)"]),
    ],
)
def test_bad_values_exit_2_with_one_line_naming_option_value_and_valid_ones(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: list[str]
) -> None:
    """Parsing errors; the values the config models refuse are in test_preflight (through main) and test_config."""
    err = _error(capsys, PipelineConfig, argv)
    assert err.splitlines() == [err.splitlines()[0], HINT], err  # no usage dump
    assert err.startswith("train_flow: error: ")
    for text in expected:
        assert text in err, (text, err)


def test_every_invalid_field_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(capsys, PipelineConfig, ["--training.epochs", "-1", "--dataset.n_train", "1", "--devices", "tpu"])
    assert "invalid configuration" in err and err.rstrip().endswith(HINT)
    for option in ("--training.epochs:", "--dataset.n_train:", "--devices:"):
        assert option in err


# --- any model: nested defaults, required fields, new fields --------------------------------------------


class _Inner(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    rate: float = Field(0.5, gt=0, description="a rate")
    mode: Literal["fast", "slow"] = Field("fast", description="a mode")


class _Toy(BaseModel):
    """A toy config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    inner: _Inner = _Inner(rate=2.0)
    limit: Optional[int] = Field(None, ge=1, description="an optional cap")
    weights: list[float] = Field([1.0], description="some weights")
    required_thing: int = Field(description="no default")


def test_a_model_of_any_shape(capsys: pytest.CaptureFixture[str]) -> None:
    config = parse_config(_Toy, ["--required_thing", "7", "--inner.mode", "slow", "--weights", "0.5", "1e-3"])
    assert config == _Toy(required_thing=7, inner=_Inner(rate=2.0, mode="slow"), weights=[0.5, 1e-3])
    assert config.inner.rate == 2.0  # the parent's default instance, not _Inner's class default
    assert "the following arguments are required: --required_thing" in _error(capsys, _Toy, [])
    err = _error(capsys, _Toy, ["--required_thing", "1", "--inner.mode", "medium"])
    assert "--inner.mode: Input should be 'fast' or 'slow' (got 'medium')" in err

    class _Grown(_Toy):
        extra_knob: float = Field(0.25, ge=0, description="a knob added later")

    assert "--extra_knob" in cli_source(_Grown).root_parser.format_help()
    assert parse_config(_Grown, ["--required_thing", "1", "--extra_knob", "0.75"]).extra_knob == 0.75


# --- the pre-flight folder check ---------------------------------------------------------------------------


def test_a_creatable_folder_passes_and_is_not_created(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    assert check_writable_folder(target) == target.resolve()
    assert not (tmp_path / "a").exists() and list(tmp_path.iterdir()) == []  # the probe is gone too
    assert check_writable_folder(tmp_path) == tmp_path.resolve()


def test_a_file_or_a_path_through_a_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "taken"
    file.write_text("x")
    with pytest.raises(ValueError, match=f"'{file}' exists and is not a folder"):
        check_writable_folder(file)
    with pytest.raises(ValueError, match=f"'{file}/sub' cannot be created: '{file}' exists and is not a folder"):
        check_writable_folder(file / "sub")


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux's /sys, where no one can create folders")
def test_a_folder_that_cannot_be_created_is_refused() -> None:
    with pytest.raises(ValueError, match="'/sys/nodecore-artifacts' cannot be created in '/sys': "):
        check_writable_folder("/sys/nodecore-artifacts")


def test_a_console_run_sends_no_flow_heartbeats_unless_the_environment_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import get_current_settings

    from flows.train_flow import without_flow_heartbeats

    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)
    before = get_current_settings().flows.heartbeat_frequency
    with without_flow_heartbeats():
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency == before
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "60")
    with without_flow_heartbeats():
        assert get_current_settings().flows.heartbeat_frequency == before  # left to Prefect's own reading
