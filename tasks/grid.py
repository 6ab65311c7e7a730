"""The model x solver x device x seed grid: which devices exist, which cells run, which slot each training holds."""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict


class Cell(BaseModel):
    """One grid cell: a model kind with a solver (a root finder for ``deq``) trained on a device from an init seed.

    ``seed`` is the model's init seed when the grid sweeps several, and shows in the name (``dopri5@cpu#s1``);
    None in a grid of one seed (the config's: see ``PipelineConfig.cell_seed``), whose names have none.
    """

    model_config = ConfigDict(frozen=True)

    solver: str
    device: str
    model: str = "node"
    seed: Optional[int] = None

    @property
    def name(self) -> str:
        prefix = "" if self.model == "node" else f"{self.model}-"
        return f"{prefix}{self.solver}@{self.device}{self._seed_suffix}"

    @property
    def field_key(self) -> str:
        """Which field stage (initial weights) the cell trains from: its model kind, and its seed if it has one."""
        return f"{self.model}{self._seed_suffix}"

    @property
    def _seed_suffix(self) -> str:
        return "" if self.seed is None else f"#s{self.seed}"


# What a host with a CUDA (or ROCm, or WSL2's) driver has; without any of them torch sees no CUDA device.
_GPU_DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd", "/dev/dxg")


def cuda_device_count() -> int:
    """CUDA devices torch sees here; on a Linux host with no GPU driver, 0 without importing torch (seconds)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return 0
    if sys.platform == "linux" and not any(Path(path).exists() for path in _GPU_DRIVER_PATHS):
        return 0
    import torch

    return torch.cuda.device_count()


def resolve_devices(requested: list[str], *, cuda_count: int, check: bool = True) -> list[str]:
    """Expand and check device names against the ``cuda_count`` CUDA devices visible here.

    ``auto`` means every visible CUDA device, or ``cpu`` when there is none; ``cuda`` means ``cuda:0``.
    With ``check=False`` explicit ``cuda:N`` devices are kept unchecked (they belong to other hosts).

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
            if check and device.startswith("cuda") and device not in available:
                valid = ", ".join(["cpu", *available])
                raise ValueError(
                    f"device {device!r} does not exist: this machine has {cuda_count} CUDA device(s); "
                    f"valid devices: {valid}, auto"
                )
            if device not in resolved:
                resolved.append(device)
    return resolved


def grid_cells(solvers: list[str], devices: list[str], models: list[str] = ("node",), *,
               root_finder: str = "anderson", seeds: Sequence[int] = ()) -> list[Cell]:
    """Every (model, solver, device, seed) cell, models outer, seeds inner (a cell's seeds side by side); a ``deq``
    model takes one cell per device and seed. Fewer than two seeds give cells without one (see :class:`Cell`)."""
    swept: list[Optional[int]] = list(seeds) if len(seeds) > 1 else [None]
    cells = []
    for model in models:
        for solver in [root_finder] if model == "deq" else solvers:
            cells += [Cell(solver=solver, device=device, model=model, seed=seed) for device in devices
                      for seed in swept]
    return cells


def physical_device(device: str, *, visible: str | None = None) -> str:
    """``device`` as this machine numbers it: under ``CUDA_VISIBLE_DEVICES=2,3``, ``cuda:1`` is GPU 3."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if not device.startswith("cuda") or not visible:
        return device
    index = int(device.partition(":")[2] or 0)
    ids = [part.strip() for part in visible.split(",") if part.strip()]
    return f"cuda:{ids[index]}" if index < len(ids) else device


def device_slot(device: str, *, host: str | None = None) -> str:
    """Name of the slots of ``device`` on ``host`` (default: this one): their Prefect global concurrency limit
    and the stem of their lock files (see :mod:`tasks.slots`)."""
    host = host or socket.gethostname()
    return f"nodecore-device-{host}-{physical_device(device).replace(':', '-')}"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one, else every core)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def slot_limit(device: str, *, cpu_slots: int | None = None) -> int:
    """Trainings a device takes at once: one per GPU; on the CPU, one per core this process may use."""
    return (cpu_slots or usable_cores()) if device == "cpu" else 1


def artifact_key(prefix: str, cell: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for ``cell``: ``dopri5@cpu`` -> ``...-dopri5-cpu``."""
    return f"{prefix}-{re.sub(r'[^a-z0-9]+', '-', cell.lower()).strip('-')}"
