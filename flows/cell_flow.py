"""One grid cell as a flow of its own, so a work pool's worker (on any host) can run it.

The training flow dispatches cells here when ``run.executor`` is ``deployments``: a cell for ``cuda:N``
goes to the GPU pool's deployment with ``CUDA_VISIBLE_DEVICES=N``, CPU cells to the CPU pools in turn.
The cell's stage outputs are written as JSON to ``result_path`` (in the shared artifacts folder), where
the dispatching flow reads them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # loaded by a worker from its entrypoint: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.config import PipelineConfig
from tasks.grid import Cell
from flows.stages import Stages, resolve_cells
from nodecore.files import atomic_write
from tasks.cache import StageOutput

CELL_FLOW_NAME = "nodecore-cell"


@flow(name=CELL_FLOW_NAME, task_runner=ThreadPoolTaskRunner(max_workers=4))
def cell_flow(config: PipelineConfig, solver: str, device: str, dataset: StageOutput, field: StageOutput,
              result_path: str | None = None, model: str = "node",
              run_device: str | None = None) -> dict[str, StageOutput]:
    """Train, evaluate, integrate and render one (model, solver, device) cell from the grid's dataset and
    the field stage's output for that model."""
    stages = Stages(config)
    cell = Cell(solver=solver, device=device, model=model)
    outputs = resolve_cells([stages.submit_cell(cell, dataset, field, run_device=run_device)])[0]
    if result_path:
        with atomic_write(result_path) as handle:
            handle.write(json.dumps({k: v.model_dump(mode="json") for k, v in outputs.items()}).encode())
    return outputs


def read_cell_result(path: str | Path) -> dict[str, StageOutput]:
    """The stage outputs a dispatched :func:`cell_flow` wrote to ``path``."""
    return {k: StageOutput.model_validate(v) for k, v in json.loads(Path(path).read_text()).items()}
