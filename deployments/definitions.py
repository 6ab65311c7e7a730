"""The deployments: what runs, where, and when. Each passes only the config fields it changes.

* ``nodecore-train/nightly-grid``: the solver grid every night at 02:00 UTC on the ``cpu`` pool.
* ``nodecore-train/on-demand``: the default run, started from the UI or ``prefect deployment run``.
* ``nodecore-train/gpu-grid``: the grid on ``cuda:0``, its cells dispatched to the ``gpu`` pool (no schedule).
* ``nodecore-cell/cell-<pool>``: one grid cell (model, solver, device and, where the grid sweeps seeds, seed), for
  ``run.executor=deployments`` to dispatch to each pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flows.cell_flow import CELL_FLOW_NAME
from flows.dispatch import cell_deployment_name

TRAIN_ENTRYPOINT = "flows/train_flow.py:train_flow"
CELL_ENTRYPOINT = "flows/cell_flow.py:cell_flow"
FLOW_NAMES = {TRAIN_ENTRYPOINT: "nodecore-train", CELL_ENTRYPOINT: CELL_FLOW_NAME}
CPU_POOL, GPU_POOL = "cpu", "gpu"


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment: a flow entrypoint, its name, work pool, optional cron schedule and config changes."""

    entrypoint: str
    name: str
    pool: str
    cron: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    tags: tuple[str, ...] = ("nodecore",)

    @property
    def full_name(self) -> str:
        """``flow/deployment``, as Prefect names it: ``nodecore-train/on-demand``."""
        return f"{FLOW_NAMES[self.entrypoint]}/{self.name}"

    @property
    def parameters(self) -> dict[str, Any]:
        return {"config": self.config} if self.config else {}


def cell_deployment(pool: str) -> DeploymentSpec:
    """The cell flow's deployment on ``pool``."""
    return DeploymentSpec(CELL_ENTRYPOINT, cell_deployment_name(pool), pool,
                          description=f"one grid cell, dispatched by nodecore-train to pool {pool!r}")


DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    DeploymentSpec(TRAIN_ENTRYPOINT, "nightly-grid", CPU_POOL, cron="0 2 * * *",
                   config={"solvers": ["dopri5", "tsit5", "rk4", "bosh3", "euler"]},
                   description="nightly solver grid on the CPU pool"),
    DeploymentSpec(TRAIN_ENTRYPOINT, "on-demand", CPU_POOL, description="the default run, on demand"),
    DeploymentSpec(TRAIN_ENTRYPOINT, "gpu-grid", CPU_POOL,
                   config={"devices": ["cuda:0"], "run": {"executor": "deployments", "gpu_pool": GPU_POOL}},
                   description="the grid dispatched to GPU workers (one training per GPU at a time)"),
    cell_deployment(CPU_POOL),
    cell_deployment(GPU_POOL),
)
