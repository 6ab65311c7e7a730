"""One grid cell as a flow of its own, so a work pool's worker (on any host) can run it.

The training flow dispatches cells here when ``run.executor`` is ``deployments``: a cell for ``cuda:N``
goes to the GPU pool's deployment with ``CUDA_VISIBLE_DEVICES=N``, CPU cells to the CPU pools in turn.
The cell's stage outputs are written as JSON to ``result_path`` in the artifacts store (a shared folder or
an object store), where the dispatching flow reads them.
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
from tasks.cache import StageOutput, read_stage
from tasks.store import ArtifactStore

CELL_FLOW_NAME = "nodecore-cell"


@flow(name=CELL_FLOW_NAME, task_runner=ThreadPoolTaskRunner(max_workers=4))
def cell_flow(config: PipelineConfig, solver: str, device: str, dataset: StageOutput, field: StageOutput,
              result_path: str | None = None, model: str = "node",
              run_device: str | None = None, seed: int | None = None) -> dict[str, StageOutput]:
    """Train, evaluate, integrate and render one (model, solver, device, seed) cell from the grid's dataset and
    the field stage's output for that model and seed; ``result_path`` is relative to the artifacts store.

    ``seed`` is the cell's init seed in a grid that sweeps several (:class:`Cell`); None: the config's own.
    """
    stages = Stages(config)
    cell = Cell(solver=solver, device=device, model=model, seed=seed)
    outputs = resolve_cells(stages.submit_cells([cell], dataset, {cell.field_key: field}, run_device=run_device))[0]
    if result_path:
        stages.store.write_bytes(result_path, json.dumps({k: v.model_dump(mode="json")
                                                          for k, v in outputs.items()}).encode())
    return outputs


class SupersededOutput(ValueError):
    """A stage output a cell result names is no longer its key's: another build of the key wrote its manifest since.

    Two hosts built the key at once (one timed out but still ran): the manifest written last names the other
    build's files, and this cell's later stages were made from the lost build's. Each is verified, but together
    they would pair one training with another training's evaluation and plots; the cell is run again instead,
    and takes the winning build from the cache.
    """


class UnverifiedOutput(ValueError):
    """A stage output a cell result names has no verified manifest in the store (now): it is missing, a file of it is
    gone, or its signature does not verify with this host's key.

    A store that lost an output (or a cleanup that removed it) is recovered by running the cell again, which
    rebuilds what is missing; the dispatch does so a bounded number of times (``--run.retries``). An output signed
    with another key keeps failing: every host needs the same ``NODECORE_SIGNING_KEY``.
    """


def read_cell_result(path: str, store: ArtifactStore) -> dict[str, StageOutput]:
    """The stage outputs a dispatched :func:`cell_flow` wrote to ``path`` in ``store``, each re-read from its
    verified manifest.

    The file only says which stage folders hold the cell's outputs; what is returned comes from their signed,
    verified manifests, so an edited result file can point at nothing but real outputs.

    Raises:
        SupersededOutput: a verified manifest is not the output the file names (see the class).
        UnverifiedOutput: the file names an output without a verified manifest (see the class).
        ValueError: the file is not a cell result.
    """
    try:
        blob = store.read_bytes(path)
        if blob is None:
            raise FileNotFoundError(f"no such object in {store.location}")
        claimed = {k: StageOutput.model_validate(v) for k, v in json.loads(blob).items()}
    except (OSError, ValueError) as err:
        raise ValueError(f"cell result {str(path)!r} is unreadable: {err}") from err
    outputs = {}
    for name, output in claimed.items():
        plain = output.key.isalnum() and output.stage.replace("-", "").isalnum()
        verified = read_stage(store, output.stage, output.key) if plain else None
        if verified is None:
            raise UnverifiedOutput(f"cell result {str(path)!r} names {output.stage}/{output.key}, which has no "
                                   "verified manifest (missing, a file of it gone, or signed with another key: is "
                                   "NODECORE_SIGNING_KEY the same on every host?)")
        if verified.digest != output.digest:
            raise SupersededOutput(f"cell result {str(path)!r} names an output of {output.stage}/{output.key} that "
                                   "another build of that key has replaced")
        outputs[name] = verified
    return outputs
