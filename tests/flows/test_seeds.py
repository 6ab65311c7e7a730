"""The seed axis without a server: which stage inputs each cell gets, and the initial weights its training starts from.

End to end (a seeded grid reusing the default grid's cells, then rerun all cached): tests/flows/test_train_flow.py;
dispatched to a work pool: tests/deployments/test_deployments.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flows.stages import BUILD_FIELD, TRAIN, Stages
from tasks.cache import StageOutput, stage_key
from tasks.config import PipelineConfig
from tasks.field import build_vector_field
from tasks.grid import Cell, grid_cells
from tasks.signing import KEY_ENV
from tasks.train import build_cell_model

DATASET = StageOutput(stage="generate-dataset", key="0" * 24, files={}, digests={}, data={"dim": 2, "classes": 2})


def _cells(config: PipelineConfig) -> list[Cell]:
    """The grid the training flow runs for ``config`` on a CPU-only host."""
    return grid_cells(config.solvers, ["cpu"], config.models, root_finder=config.model.root_finder,
                      seeds=config.grid_seeds())


@pytest.mark.parametrize("seeds", [[], [0]])
def test_a_grid_without_a_second_seed_keeps_its_cell_names_field_names_and_stage_keys(
        tmp_path: Path, seeds: list[int]) -> None:
    """What a run made before the axis existed is what the same run finds now: names, fields and every key."""
    config = PipelineConfig(models=["node", "anode", "deq"], seeds=seeds, run={"artifacts_dir": str(tmp_path)})
    stages = Stages(config)
    cells = _cells(config)
    assert [cell.name for cell in cells] == ["dopri5@cpu", "rk4@cpu", "tsit5@cpu", "anode-dopri5@cpu",
                                             "anode-rk4@cpu", "anode-tsit5@cpu", "deq-anderson@cpu"]
    assert {cell.seed for cell in cells} == {None} and config.cell_seed(None) == config.model.init_seed == 0
    for cell in cells:
        # the field stage's inputs as the flow gave them before the axis: the config's own model section
        before = {"dataset": DATASET, "model": config.model, "kind": cell.model}
        assert stages.field_inputs(cell, DATASET) == before
        assert stage_key(BUILD_FIELD.stage, "code", stages.field_inputs(cell, DATASET)) == stage_key(
            BUILD_FIELD.stage, "code", before)
        for _, ref, _, inputs in stages._cell_stages(cell, DATASET, DATASET, None):
            given = inputs({"trained": DATASET})
            assert given["model"] is config.model, ref
            assert stage_key(ref.stage, "code", given) == stage_key(ref.stage, "code", {**given, "model": config.model})
    assert set(stages.cached_fields(cells, None)) == {"node", "anode", "deq"}  # the fields' names before the axis


def test_each_seed_has_its_own_field_stage_and_cell_keys(tmp_path: Path) -> None:
    config = PipelineConfig(solvers=["rk4"], models=["node", "deq"], seeds=[0, 1, 2],
                            run={"artifacts_dir": str(tmp_path)})
    stages = Stages(config)
    cells = _cells(config)
    assert [(cell.name, cell.field_key, config.cell_seed(cell.seed)) for cell in cells] == [
        ("rk4@cpu#s0", "node#s0", 0), ("rk4@cpu#s1", "node#s1", 1), ("rk4@cpu#s2", "node#s2", 2),
        ("deq-anderson@cpu#s0", "deq#s0", 0), ("deq-anderson@cpu#s1", "deq#s1", 1),
        ("deq-anderson@cpu#s2", "deq#s2", 2)]
    field_keys = {stage_key(BUILD_FIELD.stage, "code", stages.field_inputs(cell, DATASET)) for cell in cells}
    assert len(field_keys) == len(cells)
    train_keys = {stage_key(TRAIN.stage, "code", stages._cell_stages(cell, DATASET, DATASET, None)[0][3]({}))
                  for cell in cells}
    assert len(train_keys) == len(cells)
    # each training is told its seeded name, which is not part of its key
    for cell in cells:
        inputs = stages._cell_stages(cell, DATASET, DATASET, None)[0][3]({})
        assert inputs["cell_name"] == cell.name
        assert stage_key(TRAIN.stage, "code", inputs) == stage_key(TRAIN.stage, "code", {**inputs, "cell_name": "x"})
    # seed 0 is the config's own init seed: its cells are the default grid's, keys and all
    default = Stages(config.model_copy(update={"seeds": []}))
    assert stages.field_inputs(cells[0], DATASET) == default.field_inputs(Cell(solver="rk4", device="cpu"), DATASET)


def _initial_weights(config: PipelineConfig, cell: Cell, root: Path) -> dict[str, torch.Tensor]:
    """The weights ``cell``'s training starts from: its field stage built (the stage's body, no Prefect) and loaded as
    the train stage loads it."""
    stages = Stages(config)
    field = build_vector_field.fn(root=str(root), **stages.field_inputs(cell, DATASET), refresh=True)
    model, _ = build_cell_model(field, root, cell.solver, config.solver)
    return model.state_dict()


def test_the_seed_reaches_the_initial_weights_of_the_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "seed-test-key-0123456789")
    config = PipelineConfig(solvers=["rk4"], seeds=[0, 1], model={"hidden": 4},
                            run={"artifacts_dir": str(tmp_path)})
    s0, s1 = _cells(config)
    weights = {name: _initial_weights(config, cell, tmp_path / name) for name, cell in
               [("s0", s0), ("s1", s1), ("s1-again", s1)]}
    weights["default"] = _initial_weights(config.model_copy(update={"seeds": []}), Cell(solver="rk4", device="cpu"),
                                          tmp_path / "default")
    assert weights["s0"].keys() == weights["s1"].keys()

    def same(a: str, b: str) -> bool:
        return all(torch.equal(weights[a][name], weights[b][name]) for name in weights[a])

    assert not same("s0", "s1")  # another seed, other initial weights
    assert same("s1", "s1-again")  # the same seed, the same weights, built anew elsewhere
    assert same("s0", "default")  # seed 0 is the config's init seed: the default grid's weights
