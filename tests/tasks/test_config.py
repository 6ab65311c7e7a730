"""The pipeline config refuses values that would pass a plain ``gt=0`` but fail deep inside a stage.

These checks live in the models, so a run started by Prefect (a deployment, the UI form) refuses the same
values as the command line, before any stage runs.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from nodecore.datasets import DATASET_TYPES
from tasks.config import MAX_SEED, PipelineConfig


def _refusal(data: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ValidationError) as info:
        PipelineConfig.model_validate(data)
    (error,) = info.value.errors()
    return error


@pytest.mark.parametrize(("data", "loc"), [
    ({"training": {"lr": float("inf")}}, ("training", "lr")),
    ({"solver": {"step_size": float("inf")}}, ("solver", "step_size")),
    ({"model": {"t_end": "inf"}}, ("model", "t_end")),
    ({"dataset": {"noise": float("nan")}}, ("dataset", "noise")),
    ({"run": {"cell_timeout_seconds": float("inf")}}, ("run", "cell_timeout_seconds")),
])
def test_floats_are_finite(data: dict[str, Any], loc: tuple[str, ...]) -> None:
    error = _refusal(data)
    assert error["loc"] == loc and error["msg"] == "Input should be a finite number"


@pytest.mark.parametrize("section, field", [("dataset", "seed"), ("dataset", "test_seed"), ("model", "init_seed")])
def test_seeds_fit_numpy(section: str, field: str) -> None:
    assert getattr(getattr(PipelineConfig.model_validate({section: {field: MAX_SEED}}), section), field) == MAX_SEED
    error = _refusal({section: {field: MAX_SEED + 1}})
    assert error["loc"] == (section, field) and "less than or equal to 4294967295" in error["msg"]


def test_the_seed_axis_defaults_to_the_init_seed_and_refuses_duplicates_and_seeds_beyond_numpys() -> None:
    default = PipelineConfig.model_validate({"model": {"init_seed": 3}})
    assert default.seeds == [] and default.grid_seeds() == [3] and default.cell_seed(None) == 3
    assert default.seeded_model(None) is default.model  # the stages get the very model config they got before
    swept = PipelineConfig.model_validate({"seeds": [0, MAX_SEED], "model": {"init_seed": 3}})
    assert swept.grid_seeds() == [0, MAX_SEED]
    assert swept.seeded_model(MAX_SEED) == swept.model.model_copy(update={"init_seed": MAX_SEED})
    assert swept.seeded_model(3) is swept.model
    alone = PipelineConfig.model_validate({"seeds": [5]})  # one seed: the cells have none, the model takes it
    assert alone.cell_seed(None) == 5 and alone.seeded_model(None).init_seed == 5
    error = _refusal({"seeds": [1, 2, 1]})
    assert error["loc"] == ("seeds",) and error["msg"] == "Value error, duplicate entries in [1, 2, 1]"
    error = _refusal({"seeds": [0, MAX_SEED + 1]})
    assert error["loc"] == ("seeds", 1) and "less than or equal to 4294967295" in error["msg"]
    assert _refusal({"seeds": [-1]})["loc"] == ("seeds", 0)


@pytest.mark.parametrize("artifacts_dir", ["", "  "])
def test_artifacts_dir_names_a_folder(artifacts_dir: str) -> None:
    error = _refusal({"run": {"artifacts_dir": artifacts_dir}})
    assert error["loc"] == ("run", "artifacts_dir") and "names no folder" in error["msg"]


def test_more_classes_than_a_node_state_has_dimensions_is_refused() -> None:
    error = _refusal({"dataset": {"dataset_type": "gaussians"}})  # 7 classes, 2-D, models defaults to ['node']
    assert error["loc"] == ("models",)
    assert "'gaussians' has 7 classes" in error["msg"] and "2-D state" in error["msg"]
    assert "'anode' or 'deq'" in error["msg"] and "moons, circles, spirals, spheres" in error["msg"]
    assert _refusal({"dataset": {"dataset_type": "gaussians"}, "models": ["anode", "node"]})["loc"] == ("models",)


def test_classes_that_fit_are_accepted() -> None:
    for dataset_type in DATASET_TYPES:  # linear readouts take any number of classes
        PipelineConfig.model_validate({"dataset": {"dataset_type": dataset_type}, "models": ["anode", "deq"]})
    for dataset_type in set(DATASET_TYPES) - {"gaussians", "gaussians_spiral"}:
        PipelineConfig.model_validate({"dataset": {"dataset_type": dataset_type}})
    # two points per split hold only two of the seven components, as the dataset stage would draw them
    PipelineConfig.model_validate({"dataset": {"dataset_type": "gaussians", "n_train": 2, "n_test": 2}})


def test_the_flow_refuses_the_same_values_as_a_prefect_parameter() -> None:
    """Prefect validates a flow's parameters with these models before the flow body (and any stage) runs."""
    from prefect.exceptions import ParameterTypeError

    from flows.train_flow import train_flow

    train_flow.validate_parameters({"config": {"training": {"epochs": 1}}})
    bad_configs = ({"training": {"lr": "inf"}}, {"dataset": {"dataset_type": "gaussians"}}, {"run": {"artifacts_dir": ""}})
    for bad in bad_configs:
        with pytest.raises(ParameterTypeError):
            train_flow.validate_parameters({"config": bad})
