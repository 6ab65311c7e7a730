"""Stage 4: evaluate a trained cell: accuracy and loss on train and test, solver cost, timing."""

from __future__ import annotations

import json

from nodecore.checkpoints import load_model
from nodecore.dataset_io import read_dataset
from nodecore.files import atomic_write
from nodecore.training import depth_grid, evaluate
from tasks.cache import Built, StageContext, StageOutput, stage_task
from tasks.faults import maybe_fail
from tasks.retry import RETRYABLE
from tasks.config import ModelConfig


@stage_task("evaluate", **RETRYABLE)
def evaluate_cell(ctx: StageContext, *, dataset: StageOutput, trained: StageOutput, model: ModelConfig) -> Built:
    """Write ``metrics.json``: train/test accuracy and loss, NFE forward/backward, wall times, device, solver."""
    maybe_fail("evaluate", trained.data["cell"])
    classifier, checkpoint = load_model(trained.path(ctx.root, "checkpoint"))
    span = depth_grid(model.t_end, model.t_points)
    metrics = {"cell": trained.data["cell"], "model": trained.data["kind"], "solver": trained.data["solver"],
               "device": trained.data["device"], "sensitivity": checkpoint.config.get("ode", {}).get("sensitivity", "implicit")}
    for split in ("train", "test"):
        X, y, _ = read_dataset(dataset.path(ctx.root, split))
        result = evaluate(classifier, X, y, t_span=span)
        metrics |= {f"{split}_accuracy": result.accuracy, f"{split}_loss": result.loss}
    metrics |= {
        "nfe_forward": trained.data["nfe_forward"],
        "nfe_backward": trained.data["nfe_backward"],
        "nfe_forward_eval": result.nfe_forward,
        "train_seconds": trained.data["train_seconds"],
        "queue_seconds": trained.data.get("queue_seconds", 0.0),
        "classes": dataset.data["classes"],
    }
    path = ctx.folder / "metrics.json"
    with atomic_write(path) as handle:
        handle.write(json.dumps(metrics, indent=2).encode())
    return Built(files={"metrics": path}, data=metrics)
