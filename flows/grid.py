"""The solver x device grid: which devices exist, which cells run, which slot each training holds."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict


class Cell(BaseModel):
    """One grid cell: a solver trained on a device."""

    model_config = ConfigDict(frozen=True)

    solver: str
    device: str

    @property
    def name(self) -> str:
        return f"{self.solver}@{self.device}"


def resolve_devices(requested: list[str], *, cuda_count: int) -> list[str]:
    """Expand and check device names against the ``cuda_count`` CUDA devices visible here.

    ``auto`` means every visible CUDA device, or ``cpu`` when there is none; ``cuda`` means ``cuda:0``.

    Raises:
        ValueError: a CUDA device that does not exist, naming the ones that do.
    """
    available = [f"cuda:{i}" for i in range(cuda_count)]
    resolved: list[str] = []
    for name in requested:
        if name == "auto":
            expanded = available or ["cpu"]
        elif name == "cuda":
            expanded = ["cuda:0"]
        else:
            expanded = [name]
        for device in expanded:
            if device.startswith("cuda") and device not in available:
                valid = ", ".join(["cpu", *available])
                raise ValueError(
                    f"device {device!r} does not exist: this machine has {cuda_count} CUDA device(s); "
                    f"valid devices: {valid}, auto"
                )
            if device not in resolved:
                resolved.append(device)
    return resolved


def grid_cells(solvers: list[str], devices: list[str]) -> list[Cell]:
    """Every (solver, device) pair, solvers outer."""
    return [Cell(solver=solver, device=device) for solver in solvers for device in devices]


def device_slot(device: str) -> str:
    """Name of the Prefect global concurrency limit that guards ``device``."""
    return "nodecore-device-" + device.replace(":", "-")


def device_slot_limits(devices: list[str], *, cpu_slots: int | None = None) -> dict[str, int]:
    """Concurrency limits: one training per GPU at a time; CPU trainings capped by the cores."""
    cpu_slots = cpu_slots or os.cpu_count() or 1
    return {device_slot(d): (cpu_slots if d == "cpu" else 1) for d in devices}
