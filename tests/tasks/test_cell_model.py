"""A grid cell's model: the field stage's weights with the cell's solver and the run's solver settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nodecore.checkpoints import build_model, classifier_config, save_checkpoint
from tasks.cache import StageOutput
from tasks.config import PipelineConfig, SolverConfig
from tasks.train import build_cell_model


def _field(root: Path) -> StageOutput:
    config = classifier_config("node", dim=2, n_classes=2)
    torch.manual_seed(0)
    save_checkpoint(root / "field.pt", build_model(config), config=config)
    return StageOutput(stage="field", key="k", files={"field": "field.pt"}, digests={"field": "-"})


def test_the_pipeline_trains_with_dense_output_and_the_seminorm_by_default(tmp_path: Path) -> None:
    """NeuralODE's own defaults are torchdyn's (step onto every point, no seminorm); the pipeline keeps the
    faster settings it always trained with, and says so in its config."""
    model, config = build_cell_model(_field(tmp_path), tmp_path, "dopri5", SolverConfig())
    assert (model.interpolator, model.seminorm, model.solver.name) == ("dense", True, "dopri5")
    assert config["ode"]["interpolator"] == "dense" and config["ode"]["seminorm"] is True


def test_the_solver_section_sets_interpolator_and_seminorm(tmp_path: Path) -> None:
    solver = PipelineConfig.model_validate({"solver": {"interpolator": "step", "seminorm": False}}).solver
    model, _ = build_cell_model(_field(tmp_path), tmp_path, "tsit5", solver)
    assert (model.interpolator, model.seminorm) == ("step", False)


def test_an_unknown_interpolator_is_refused_naming_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"interpolator[\s\S]*'dense' or 'step'"):
        SolverConfig(interpolator="4th")
