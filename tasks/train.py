"""Stage 3: train one grid cell's NeuralODE on its assigned device, resumably."""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn
from prefect import get_client, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from nodecore.checkpoints import build_model, load_checkpoint, save_checkpoint
from nodecore.dataset_io import read_dataset
from nodecore.files import atomic_write
from nodecore.training import EpochStats, History, depth_grid, train
from tasks.cache import Built, StageContext, StageOutput, stage_task
from tasks.faults import maybe_fail
from tasks.retry import RETRYABLE
from tasks.config import ModelConfig, SolverConfig, TrainingConfig
from tasks.grid import Cell, device_slot, slot_limit

RESUME = "resume.pt"


def host_label() -> str:
    """Who trained: ``NODECORE_HOST_LABEL`` (set it per worker) or the host name."""
    return os.environ.get("NODECORE_HOST_LABEL") or socket.gethostname()


@contextmanager
def hold_device(device: str) -> Iterator[None]:
    """Hold this host's concurrency slot for ``device`` (a Prefect global concurrency limit) while training.

    The limit is created on first use with one slot per GPU and one per CPU core, so any worker on any
    host can train without setting anything up first.
    """
    name = device_slot(device)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            limit = GlobalConcurrencyLimitCreate(name=name, limit=slot_limit(device))
            try:
                client.create_global_concurrency_limit(limit)
            except ObjectAlreadyExists:  # another training on this device created it first: use theirs
                pass
    with concurrency(name, occupy=1, strict=True):
        yield


def build_cell_model(field: StageOutput, root: Path, solver: str, config: SolverConfig) -> tuple[nn.Module, dict]:
    """The cell's untrained model and its config: the field stage's initial weights, the cell's solver."""
    initial = load_checkpoint(field.path(root, "field"))
    model_config = dict(initial.config)
    if model_config["kind"] != "deq":
        model_config["ode"] = {"solver": solver, "sensitivity": config.sensitivity, "atol": config.atol,
                               "rtol": config.rtol, "atol_adjoint": config.atol_adjoint,
                               "rtol_adjoint": config.rtol_adjoint, "step_size": config.step_size,
                               "max_steps": config.max_steps}
    model = build_model(model_config)
    model.load_state_dict(initial.state_dict)
    return model, model_config


@stage_task("train", **RETRYABLE)
def train_cell(
    ctx: StageContext,
    *,
    dataset: StageOutput,
    field: StageOutput,
    model: ModelConfig,
    solver: str,
    solver_config: SolverConfig,
    training: TrainingConfig,
    device: str,
    run_device: str | None = None,
) -> Built:
    """Train on ``device`` holding its concurrency slot; checkpoint every few epochs and resume from there.

    ``run_device`` is the same device as this process names it, when that differs (a dispatched cell for
    ``cuda:3`` runs with ``CUDA_VISIBLE_DEVICES=3`` and trains on ``cuda:0``); it is not part of the key.
    """
    logger = get_run_logger()
    cell = Cell(solver=solver, device=device, model=field.data["kind"]).name
    X, y, _ = read_dataset(dataset.path(ctx.root, "train"))
    classifier, config = build_cell_model(field, ctx.root, solver, solver_config)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=training.lr)
    config |= {"training": training.model_dump(mode="json"), "device": device}

    history, start_epoch = History(), 0
    resume_path = ctx.folder / RESUME
    if resume_path.is_file():
        resume = load_checkpoint(resume_path)
        classifier.load_state_dict(resume.state_dict)
        optimizer.load_state_dict(resume.optimizer_state)
        history, start_epoch = History.from_dict(resume.history), resume.epoch
        logger.info("%s: resuming from the checkpoint at epoch %d", cell, start_epoch)

    progress_id = create_progress_artifact(
        progress=100.0 * start_epoch / max(training.epochs, 1),
        description=f"training {cell}: epochs completed, percent",
    )

    local = run_device or device
    with hold_device(local):
        classifier.to(local)
        # Adam's state follows its parameters; moved after loading so a CPU checkpoint resumes on a GPU.
        optimizer.load_state_dict(optimizer.state_dict())  # load_state_dict casts state to the params' device
        X, y, span = X.to(local), y.to(local), depth_grid(model.t_end, model.t_points, device=local)

        def on_epoch(stats: EpochStats) -> None:
            history.epochs.append(stats)
            done = stats.epoch + 1
            if done % training.log_every == 0 or done == training.epochs:
                logger.info("%s: epoch %d/%d loss %.4f accuracy %.4f nfe %d/%d", cell, done, training.epochs,
                            stats.loss, stats.accuracy, stats.nfe_forward, stats.nfe_backward)
                update_progress_artifact(progress_id, 100.0 * done / max(training.epochs, 1))
            if done % training.checkpoint_every == 0 and done < training.epochs:
                save_checkpoint(resume_path, classifier, config=config, epoch=done, history=history.to_dict(),
                                optimizer=optimizer)
                maybe_fail("train", cell)  # test hook: fails after a checkpoint, so a retry resumes

        started = time.perf_counter()
        train(classifier, X, y, t_span=span, epochs=training.epochs, lr=training.lr,
              batch_size=training.batch_size, optimizer=optimizer, start_epoch=start_epoch, callback=on_epoch)
        seconds = time.perf_counter() - started

    update_progress_artifact(progress_id, 100.0)
    checkpoint = save_checkpoint(ctx.folder / "checkpoint.pt", classifier, config=config, epoch=training.epochs,
                                 history=history.to_dict())
    history_path = ctx.folder / "history.json"
    with atomic_write(history_path) as handle:
        handle.write(json.dumps(history.to_dict()).encode())
    resume_path.unlink(missing_ok=True)
    last = history.epochs[-1] if history.epochs else None
    return Built(
        files={"checkpoint": checkpoint, "history": history_path},
        data={"solver": solver, "device": device, "kind": config["kind"], "cell": cell, "host": host_label(),
              "train_seconds": seconds,
              "resumed_from_epoch": start_epoch,
              "nfe_forward": last.nfe_forward if last else 0, "nfe_backward": last.nfe_backward if last else 0},
    )
