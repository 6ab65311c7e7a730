"""Tests for flows.cli: every config field is an option, overrides validate, bad values exit with status 2."""

from __future__ import annotations

import argparse
from typing import Literal, Optional

import pytest
from pydantic import BaseModel, ConfigDict, Field

from flows.cli import build_parser, collect_overrides, leaf_paths, option_name, parse_config
from tasks.config import PipelineConfig
from nodecore.datasets import DATASET_TYPES
from nodecore.solvers import SOLVER_NAMES


def _walk_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf path of ``model``, found independently of flows.cli."""
    paths = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            paths += _walk_fields(field.annotation, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def _error(capsys, model: type[BaseModel], argv: list[str]) -> str:
    """Run parse_config expecting exit status 2; return what it wrote to stderr."""
    with pytest.raises(SystemExit) as info:
        parse_config(model, argv)
    assert info.value.code == 2
    return capsys.readouterr().err


# --- the real config ------------------------------------------------------------------------------------


def test_help_lists_every_leaf_field() -> None:
    help_text = build_parser(PipelineConfig, prog="train_flow").format_help()
    paths = _walk_fields(PipelineConfig)
    assert len(paths) > 30 and ("training", "epochs") in paths and ("solvers",) in paths
    for path in paths:
        assert option_name(path) in help_text, path
    assert leaf_paths(PipelineConfig) == paths
    assert "--no-model.depth_variant" in help_text and "--no-run.refresh" in help_text


def test_help_shows_descriptions_and_defaults() -> None:
    parser = build_parser(PipelineConfig)
    help_text = " ".join(parser.format_help().split())  # undo argparse's line wrapping
    assert "training epochs (default: 200)" in help_text
    assert "grid axis: solvers (default: dopri5 rk4 tsit5)" in help_text
    assert "mini-batch size; full batch if unset (default: none)" in help_text
    assert "(default: false)" in help_text
    assert parser.description == "Everything one run of the training flow needs."


def test_help_exits_zero(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        parse_config(PipelineConfig, ["--help"])
    assert info.value.code == 0
    assert "--dataset.n_train" in capsys.readouterr().out


def test_every_default_is_suppressed() -> None:
    parser = build_parser(PipelineConfig)
    for path in leaf_paths(PipelineConfig):
        assert parser.get_default(".".join(path)) is argparse.SUPPRESS
    assert vars(parser.parse_args([])) == {}


def test_choices_come_from_the_registries() -> None:
    actions = {action.dest: action for action in build_parser(PipelineConfig)._actions}
    assert list(actions["solvers"].choices) == list(SOLVER_NAMES)
    assert actions["solvers"].nargs == "+"
    assert list(actions["dataset.dataset_type"].choices) == list(DATASET_TYPES)
    assert isinstance(actions["model.depth_variant"], argparse.BooleanOptionalAction)


def test_no_options_gives_the_default_config() -> None:
    config, args = parse_config(PipelineConfig, [])
    assert config == PipelineConfig()
    assert vars(args) == {}


def test_overrides_land_in_the_config() -> None:
    config, _ = parse_config(
        PipelineConfig,
        [
            "--training.epochs", "3",
            "--training.lr=0.2",
            "--model.depth_variant",
            "--no-run.refresh",
            "--solvers", "rk4", "euler",
            "--devices", "cpu", "cuda:1",
            "--solver.step_size", "0.05",
            "--training.batch_size", "none",
            "--dataset.dataset_type", "spirals",
            "--model.activation", "relu",
            "--run.artifacts_dir", "/tmp/x y",
        ],
    )
    assert config.training.epochs == 3 and config.training.lr == 0.2
    assert config.model.depth_variant is True and config.run.refresh is False
    assert config.solvers == ["rk4", "euler"] and config.devices == ["cpu", "cuda:1"]
    assert config.solver.step_size == 0.05 and config.training.batch_size is None
    assert config.dataset.dataset_type == "spirals" and config.model.activation == "relu"
    assert config.run.artifacts_dir == "/tmp/x y"
    # untouched fields, in the same nested models and elsewhere, keep their defaults
    defaults = PipelineConfig()
    assert config.training.checkpoint_every == defaults.training.checkpoint_every
    assert config.dataset.model_dump(exclude={"dataset_type"}) == defaults.dataset.model_dump(exclude={"dataset_type"})
    assert config.output == defaults.output


def test_none_resets_an_optional_field() -> None:
    config, _ = parse_config(PipelineConfig, ["--training.batch_size", "8"])
    assert config.training.batch_size == 8
    config, _ = parse_config(PipelineConfig, ["--training.batch_size", "none", "--solver.step_size", "None"])
    assert config.training.batch_size is None and config.solver.step_size is None


def test_config_is_frozen_and_typed() -> None:
    config, _ = parse_config(PipelineConfig, ["--dataset.noise", "0"])
    assert isinstance(config.dataset.noise, float) and config.dataset.noise == 0.0
    with pytest.raises(Exception):
        config.dataset.noise = 1.0  # type: ignore[misc]


def test_extra_options_stay_separate() -> None:
    parser = build_parser(PipelineConfig, prog="train_flow")
    parser.add_argument("--print-config", action="store_true")
    config, args = parse_config(PipelineConfig, ["--print-config", "--training.epochs", "1"], parser=parser)
    assert args.print_config is True and config.training.epochs == 1
    assert vars(args) == {"print_config": True}  # config options are not duplicated in the namespace


def test_collect_overrides_holds_only_given_options() -> None:
    parser = build_parser(PipelineConfig)
    namespace = parser.parse_args(["--training.epochs", "5", "--solvers", "rk4"])
    assert collect_overrides(PipelineConfig, namespace) == {"training": {"epochs": 5}, "solvers": ["rk4"]}


def test_parser_from_another_model_is_rejected() -> None:
    with pytest.raises(ValueError, match="not built from PipelineConfig"):
        parse_config(PipelineConfig, [], parser=argparse.ArgumentParser())


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--solvers", "foo"], ["--solvers", "invalid choice: 'foo'", *map(repr, SOLVER_NAMES)]),
        (["--solvers", "rk4", "foo"], ["--solvers", "invalid choice: 'foo'", "'dopri5'"]),
        (["--training.epochs", "-1"], ["--training.epochs: Input should be greater than or equal to 0"]),
        (["--training.epochs", "many"], ["--training.epochs", "invalid int value: 'many'"]),
        (["--training.lr", "0"], ["--training.lr: Input should be greater than 0"]),
        (["--dataset.dataset_type", "blobs"], ["--dataset.dataset_type", "'blobs'", *map(repr, DATASET_TYPES)]),
        (["--model.activation", "gelu"], ["--model.activation", "invalid choice", "'tanh'"]),
        (["--solver.step_size", "fast"], ["--solver.step_size", "invalid float-or-none value"]),
        (["--solver.step_size", "-0.1"], ["--solver.step_size: Input should be greater than 0"]),
        (["--solvers", "rk4", "rk4"], ["--solvers: duplicate entries"]),
        (["--devices", "gpu"], ["--devices: unknown device 'gpu'", "'cuda:N'"]),
        (["--training.epoch", "3"], ["unrecognized arguments: --training.epoch"]),
        (["--model.depth_variant", "yes"], ["unrecognized arguments: yes"]),
    ],
)
def test_invalid_values_exit_2_naming_the_option(capsys, argv: list[str], expected: list[str]) -> None:
    err = _error(capsys, PipelineConfig, argv)
    assert "usage:" in err
    for text in expected:
        assert text in err, (text, err)


def test_every_invalid_field_is_reported(capsys) -> None:
    err = _error(capsys, PipelineConfig, ["--training.epochs", "-1", "--dataset.n_train", "1", "--devices", "tpu"])
    assert "invalid configuration" in err
    for option in ("--training.epochs:", "--dataset.n_train:", "--devices:"):
        assert option in err


# --- a toy model: new fields are picked up without touching flows.cli ------------------------------------


class _Inner(BaseModel):
    """Inner settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate: float = Field(0.5, gt=0, description="a rate")
    mode: Literal["fast", "slow"] = Field("fast", description="a mode")
    level: Literal[1, 2, 3] = Field(1, description="a level")


class _Toy(BaseModel):
    """A toy config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    inner: _Inner = _Inner(rate=2.0)
    count: int = Field(3, ge=0, description="how many")
    name: str = Field("toy", description="100% a name")
    verbose: bool = Field(True, description="talk more")
    limit: Optional[int] = Field(None, ge=1, description="an optional cap")
    tags: list[Literal["a", "b", "c"]] = Field(["a"], description="some tags")
    weights: list[float] = Field([1.0], description="some weights")
    maybe_mode: Optional[Literal["x", "y"]] = Field(None, description="an optional choice")
    required_thing: int = Field(description="no default")


def test_toy_model_fields_are_picked_up(capsys) -> None:
    parser = build_parser(_Toy, prog="toy")
    help_text = parser.format_help()
    for path in _walk_fields(_Toy):
        assert option_name(path) in help_text
    flat = " ".join(help_text.split())
    assert "100% a name (default: toy)" in flat and "no default (required)" in flat
    assert "a rate (default: 2.0)" in flat  # the parent's default instance, not _Inner's class default
    assert "--no-verbose" in help_text and "{x,y,none}" in help_text

    config, _ = parse_config(
        _Toy,
        [
            "--required_thing", "7", "--no-verbose", "--limit", "4", "--tags", "b", "c",
            "--weights", "0.5", "1e-3", "--inner.mode", "slow", "--inner.level", "3", "--maybe_mode", "y",
        ],
    )
    assert config.required_thing == 7 and config.verbose is False and config.limit == 4
    assert config.tags == ["b", "c"] and config.weights == [0.5, 1e-3]
    assert config.inner == _Inner(rate=2.0, mode="slow", level=3)  # rate keeps the parent's default
    assert config.maybe_mode == "y"
    assert parse_config(_Toy, ["--required_thing", "1", "--maybe_mode", "none"])[0].maybe_mode is None

    err = _error(capsys, _Toy, [])
    assert "--required_thing: Field required" in err
    err = _error(capsys, _Toy, ["--required_thing", "1", "--inner.level", "4"])
    assert "--inner.level" in err and "invalid choice: '4' (choose from 1, 2, 3)" in err
    err = _error(capsys, _Toy, ["--required_thing", "1", "--tags", "a", "z"])
    assert "--tags" in err and "'z'" in err


def test_adding_a_field_adds_an_option() -> None:
    class _Grown(_Toy):
        extra_knob: float = Field(0.25, ge=0, description="a knob added later")

    assert option_name(("extra_knob",)) not in build_parser(_Toy).format_help()
    assert option_name(("extra_knob",)) in build_parser(_Grown).format_help()
    config, _ = parse_config(_Grown, ["--required_thing", "1", "--extra_knob", "0.75"])
    assert config.extra_knob == 0.75


def test_unsupported_field_types_fail_loudly() -> None:
    class _Bad(BaseModel):
        table: dict[str, int] = {}

    with pytest.raises(TypeError, match="--table"):
        build_parser(_Bad)
