"""Stage 2: build the vector field: its spec and initial weights."""

from __future__ import annotations

import threading

import torch

from nodecore.architectures import MLPFieldSpec, build_field
from nodecore.checkpoints import save_checkpoint
from tasks.cache import Built, StageContext, StageOutput, stage_task
from flows.config import ModelConfig

_RNG_LOCK = threading.Lock()


def field_spec(model: ModelConfig, dim: int) -> MLPFieldSpec:
    """The nodecore field spec for the pipeline's model config and the data's dimension."""
    return MLPFieldSpec(dim=dim, hidden=model.hidden, layers=model.layers, activation=model.activation,
                        depth_variant=model.depth_variant)


@stage_task("build-vector-field")
def build_vector_field(ctx: StageContext, *, dataset: StageOutput, model: ModelConfig) -> Built:
    """Initialise the vector field from ``model.init_seed`` and save spec + weights as ``field.pt``."""
    spec = field_spec(model, dataset.data["dim"])
    with _RNG_LOCK, torch.random.fork_rng(devices=[]):  # the global RNG, without racing other threads
        torch.manual_seed(model.init_seed)
        field = build_field(spec)
    path = save_checkpoint(ctx.folder / "field.pt", field, config={"field": spec.to_dict()})
    return Built(files={"field": path}, data={"spec": spec.to_dict(),
                                              "parameters": sum(p.numel() for p in field.parameters())})
