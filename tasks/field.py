"""Stage 2: build the model's vector field (or equilibrium cell): its spec and initial weights."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from nodecore.architectures import MLPFieldSpec
from nodecore.checkpoints import build_model, classifier_config, save_checkpoint
from tasks.cache import Built, StageContext, StageOutput, stage_task
from tasks.config import ModelConfig

_RNG_LOCK = threading.Lock()


@contextmanager
def seeded_global_rng(seed: int) -> Iterator[None]:
    """torch's global RNG seeded with ``seed`` inside, restored after, one thread at a time.

    A module function, not the lock itself, is what the stage refers to: the stage is pickled to run in a worker
    process, and a lock cannot be pickled.
    """
    with _RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def field_spec(model: ModelConfig, dim: int) -> MLPFieldSpec:
    """The nodecore field spec for the pipeline's model config and the state's dimension."""
    return MLPFieldSpec(dim=dim, hidden=model.hidden, layers=model.layers, activation=model.activation,
                        depth_variant=model.depth_variant)


def initial_config(model: ModelConfig, kind: str, dim: int, n_classes: int) -> dict:
    """The classifier config of ``kind`` for data of ``dim`` features and ``n_classes`` classes."""
    augment = model.augment_dims if kind == "anode" else 0
    return classifier_config(
        kind, dim=dim, n_classes=n_classes, field=field_spec(model, dim + augment), augment_dims=augment,
        hidden=model.deq_hidden,
        deq={"solver": model.root_finder, "tol": model.deq_tol, "max_iter": model.deq_max_iter},
    )


@stage_task("build-vector-field")
def build_vector_field(ctx: StageContext, *, dataset: StageOutput, model: ModelConfig, kind: str = "node") -> Built:
    """Initialise a ``kind`` model from ``model.init_seed`` and save its config + weights as ``field.pt``.

    Solver settings are the training cell's; the weights do not depend on them.
    """
    config = initial_config(model, kind, dataset.data["dim"], dataset.data["classes"])
    with seeded_global_rng(model.init_seed):
        initial = build_model(config)
    path = save_checkpoint(ctx.folder / "field.pt", initial, config=config)
    return Built(files={"field": path}, data={"kind": kind, "config": config,
                                              "parameters": sum(p.numel() for p in initial.parameters())})
