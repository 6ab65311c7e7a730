"""Stage 3: train one grid cell's NeuralODE on its assigned device, resumably.

Every ``checkpoint_every`` epochs the training writes ``resume-<epoch>.pt`` into its key's folder (shared by
every build of the key) and then records its SHA-256 and epoch in ``resume.json`` (each written atomically).
With a remote store the new checkpoint and then the record are uploaded at once, and the checkpoints the record
no longer lists are deleted from the store; a retry on another host downloads the record and only the newest
checkpoint that matches it (:func:`restore_resume`). A rerun resumes only from a
checkpoint whose bytes still have the recorded digest; any other one (flipped bytes, truncated, missing,
never recorded) is discarded with a warning in the run log, and the run falls back to the one before it:
two generations are kept, so one damaged file costs ``checkpoint_every`` epochs, not the whole training.
The checkpoints are deleted only once the stage's manifest is in the store (:attr:`Built.discard`): a host
killed before that leaves them for the retry.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from nodecore.checkpoints import Checkpoint, build_model, load_checkpoint, load_weights, save_checkpoint
from nodecore.dataset_io import read_dataset
from nodecore.files import atomic_write, file_digest
from nodecore.training import EpochStats, History, depth_grid, train
from tasks import signing
from tasks.cache import Built, StageContext, StageOutput, stage_task
from tasks.faults import maybe_fail
from tasks.retry import RETRYABLE
from tasks.config import ModelConfig, SolverConfig, TrainingConfig
from tasks.cores import cpu_threads, torch_threads
from tasks.grid import Cell, artifact_key
from tasks.slots import hold_device

RESUME = "resume.json"  # the record of the resume checkpoints: file, epoch, SHA-256, newest first
RESUME_GENERATIONS = 2

Log = logging.Logger | logging.LoggerAdapter


def host_label() -> str:
    """Who trained: ``NODECORE_HOST_LABEL`` (set it per worker) or the host name."""
    return os.environ.get("NODECORE_HOST_LABEL") or socket.gethostname()


def _resume_name(epoch: int) -> str:
    return f"resume-{epoch:06d}.pt"


def _record_payload(folder: Path, entries: list[dict[str, Any]]) -> bytes:
    """What a resume record's signature covers: its entries and the stage folder (key) they belong to."""
    return json.dumps({"folder": folder.name, "checkpoints": entries}, sort_keys=True).encode()


def _write_resume_record(folder: Path, entries: list[dict[str, Any]]) -> None:
    """Write ``resume.json``, signed like a manifest, so a record planted in a shared store is not resumed from."""
    record = {"checkpoints": entries, "signature": signing.sign(_record_payload(folder, entries))}
    with atomic_write(folder / RESUME) as handle:
        handle.write(json.dumps(record, indent=1).encode())


def _parse_resume_record(folder: Path) -> list[dict[str, Any]]:
    """The checkpoints ``folder``'s signed resume record lists, newest first.

    Raises:
        FileNotFoundError: there is no record.
        OSError, ValueError, KeyError, TypeError: it is unreadable, unsigned, or names a file it may not.
    """
    record = json.loads((folder / RESUME).read_text())
    entries = [{"file": e["file"], "epoch": int(e["epoch"]), "sha256": str(e["sha256"])}
               for e in record["checkpoints"]]
    if not signing.verify(_record_payload(folder, entries), str(record.get("signature", ""))):
        raise ValueError("not signed with this host's artifacts key, or signed for another stage folder")
    for entry in entries:  # the name follows from the epoch: a record never points outside the folder
        if entry["file"] != _resume_name(entry["epoch"]):
            raise ValueError(f"file {entry['file']!r} is not {_resume_name(entry['epoch'])!r}")
    return entries


def _read_resume_record(folder: Path, log: Log) -> list[dict[str, Any]]:
    """The recorded resume checkpoints, newest first; none (with a warning) if the record is unreadable."""
    try:
        return _parse_resume_record(folder)
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("discarding the resume record %s: unreadable (%s)", folder / RESUME, err)
        return []


def save_resume(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *, config: dict, epoch: int,
                history: History, log: Log) -> Path:
    """Write the resume checkpoint of ``epoch`` and record its digest, keeping the previous generation.

    Order: the ``.pt`` (atomically), then :data:`RESUME` (atomically) listing it and the previous newest, then
    the removal of any other ``resume-*.pt``. A kill between two steps leaves the older record intact and at
    worst an unrecorded file, which :func:`load_resume` discards.
    """
    path = save_checkpoint(folder / _resume_name(epoch), model, config=config, epoch=epoch,
                           history=history.to_dict(), optimizer=optimizer)
    previous = [e for e in _read_resume_record(folder, log) if e["epoch"] < epoch]
    kept = [{"file": path.name, "epoch": epoch, "sha256": file_digest(path)}, *previous][:RESUME_GENERATIONS]
    _write_resume_record(folder, kept)
    _remove_unrecorded(folder, kept)
    return path


def _remove_unrecorded(folder: Path, entries: list[dict[str, Any]]) -> list[Path]:
    recorded = {e["file"] for e in entries}
    removed = [path for path in folder.glob("resume-*.pt") if path.name not in recorded]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def _verified(folder: Path, entry: dict[str, Any]) -> Checkpoint:
    """The checkpoint ``entry`` records, if its bytes still have the recorded digest.

    Raises:
        ValueError: it is missing, its digest differs, or it is not the recorded epoch's checkpoint.
    """
    path = folder / entry["file"]
    if not path.is_file():
        raise ValueError("the file is missing")
    digest = file_digest(path)
    if digest != entry["sha256"]:
        raise ValueError(f"its SHA-256 is {digest[:12]}..., recorded {entry['sha256'][:12]}... (damaged)")
    checkpoint = load_checkpoint(path)  # ValueError if unreadable despite its digest (e.g. another format)
    if checkpoint.epoch != entry["epoch"]:
        raise ValueError(f"it holds epoch {checkpoint.epoch}, recorded epoch {entry['epoch']}")
    return checkpoint


def load_resume(folder: Path, log: Log) -> Checkpoint | None:
    """The newest resume checkpoint in ``folder`` whose digest matches its record, or None to start afresh.

    A checkpoint that does not verify is discarded (deleted) with a warning naming the file and why: damaged
    (digest mismatch), missing, unreadable, or not recorded (written by a run killed before recording it);
    the one before it is tried next. Older recorded ones are kept unchecked until they are needed.
    """
    entries = _read_resume_record(folder, log)
    recorded = {e["file"] for e in entries}
    for path in sorted(folder.glob("resume-*.pt")):
        if path.name not in recorded:
            log.warning("discarding the resume checkpoint %s: not recorded in %s", path, RESUME)
            path.unlink(missing_ok=True)
    chosen, good = None, []
    for entry in entries:
        if chosen is None:
            try:
                chosen = _verified(folder, entry)
            except (OSError, ValueError) as err:
                log.warning("discarding the resume checkpoint %s (epoch %d): %s", folder / entry["file"],
                            entry["epoch"], err)
                (folder / entry["file"]).unlink(missing_ok=True)
                continue
        good.append(entry)
    if (folder / RESUME).exists():  # without what was discarded (an unreadable record is replaced)
        _write_resume_record(folder, good)
    return chosen


def share_resume(ctx: StageContext, path: Path, log: Log) -> None:
    """Put the new resume checkpoint ``path`` and then the record in the store; then delete from the store the
    checkpoints the record no longer lists, so it keeps only what a retry may resume from."""
    ctx.share(path, ctx.key_folder / RESUME)  # the record last
    recorded = {entry["file"] for entry in _read_resume_record(ctx.key_folder, log)}
    ctx.unshare(*(p for p in ctx.shared() if p.name.startswith("resume-") and p.name not in recorded))


def restore_resume(ctx: StageContext, log: Log) -> None:
    """Bring the store's resume record, and the newest checkpoint it lists whose bytes match it, into the key
    folder (another host's, after a retry); older checkpoints are downloaded only if the newer ones do not match.

    Nothing to do for a local store, or where the store holds no record (a local one is then kept). The local
    record is kept, too, when it verifies and is newer than the store's or the store's does not verify (a retry
    on this host after its last record upload failed, or a record planted in the store): what this host
    trained is never discarded for an older or unsigned record.
    """
    if ctx.store is None or ctx.store.is_local:
        return
    local = ctx.key_folder / RESUME
    try:
        kept, newest_here = local.read_bytes(), _parse_resume_record(ctx.key_folder)[0]["epoch"]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        kept, newest_here = None, -1
    if ctx.restore(RESUME) is None:
        return
    try:
        entries = _parse_resume_record(ctx.key_folder)
    except (OSError, ValueError, KeyError, TypeError):
        entries = []
    if kept is not None and (not entries or entries[0]["epoch"] < newest_here):
        with atomic_write(local) as handle:
            handle.write(kept)
        log.warning("keeping this host's resume record (epoch %d): the store's is %s", newest_here,
                    f"older (epoch {entries[0]['epoch']})" if entries else "unreadable or not signed")
        return
    if not entries:
        return
    for entry in entries:
        if ctx.restore(entry["file"], entry["sha256"]) is not None:
            return
        log.warning("the resume checkpoint %s (epoch %d) is missing from %s or does not match its record",
                    entry["file"], entry["epoch"], ctx.store.location)


def resume_files(ctx: StageContext) -> tuple[Path, ...]:
    """The resume record and checkpoints of the key folder, here or in the store, the record first: what a
    finished training discards once its manifest is in the store (see :attr:`Built.discard`)."""
    folder = ctx.key_folder
    checkpoints = {*folder.glob("resume-*.pt"), *(p for p in ctx.shared() if p.name.startswith("resume-"))}
    return (folder / RESUME, *sorted(checkpoints))


def build_cell_model(field: StageOutput, root: Path, solver: str, config: SolverConfig) -> tuple[nn.Module, dict]:
    """The cell's untrained model and its config: the field stage's initial weights, the cell's solver."""
    initial = load_checkpoint(field.path(root, "field"))
    model_config = dict(initial.config)
    if model_config["kind"] != "deq":
        model_config["ode"] = {"solver": solver, "sensitivity": config.sensitivity, "atol": config.atol,
                               "rtol": config.rtol, "atol_adjoint": config.atol_adjoint,
                               "rtol_adjoint": config.rtol_adjoint, "step_size": config.step_size,
                               "max_steps": config.max_steps}
    model = load_weights(build_model(model_config), initial.state_dict, source=field.path(root, "field"))
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
    """Train on ``device`` holding one of its slots; checkpoint every few epochs and resume from there.

    Waiting for the device slot (see :mod:`tasks.slots`) is logged and shown in the progress artifact;
    ``queue_seconds`` (the wait) is returned apart from ``train_seconds``. Resume checkpoints are trusted only
    while their digest matches (see :func:`load_resume`).

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
    restore_resume(ctx, logger)  # another host's resume checkpoint, when the store is remote
    resume = load_resume(ctx.key_folder, logger)
    if resume is not None:
        load_weights(classifier, resume.state_dict, source=ctx.key_folder / "resume")
        optimizer.load_state_dict(resume.optimizer_state)
        history, start_epoch = History.from_dict(resume.history), resume.epoch
        logger.info("%s: resuming from the checkpoint at epoch %d", cell, start_epoch)

    def progress(done: int) -> float:
        return 100.0 * done / max(training.epochs, 1)

    description = f"training {cell}: epochs completed, percent"
    progress_id = create_progress_artifact(key=artifact_key("nodecore-training", cell), progress=progress(start_epoch),
                                           description=description)

    def show_wait(message: str) -> None:
        update_progress_artifact(progress_id, progress(start_epoch), description=f"training {cell}: {message}")

    local = run_device or device
    with hold_device(local, label=f"train {cell}", log=logger, on_wait=show_wait) as slot:
        queue_seconds = slot.queue_seconds
        update_progress_artifact(progress_id, progress(start_epoch), description=(
            f"{description} (queued {queue_seconds:.1f} s for device slot {slot.index + 1} of {slot.limit})"))
        threads = cpu_threads(local, slot.limit)
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
                update_progress_artifact(progress_id, progress(done))
            if done % training.checkpoint_every == 0 and done < training.epochs:
                saved = save_resume(ctx.key_folder, classifier, optimizer, config=config, epoch=done, history=history,
                                    log=logger)
                share_resume(ctx, saved, logger)
                maybe_fail("train", cell)  # test hook: fails after a checkpoint, so a retry resumes

        started = time.perf_counter()
        with torch_threads(threads):
            train(classifier, X, y, t_span=span, epochs=training.epochs, lr=training.lr,
                  batch_size=training.batch_size, optimizer=optimizer, start_epoch=start_epoch, callback=on_epoch)
        seconds = time.perf_counter() - started
    logger.info("%s: trained in %.1f s after %.1f s queued for its device slot", cell, seconds, queue_seconds)

    update_progress_artifact(progress_id, 100.0)
    checkpoint = save_checkpoint(ctx.folder / "checkpoint.pt", classifier, config=config, epoch=training.epochs,
                                 history=history.to_dict())
    history_path = ctx.folder / "history.json"
    with atomic_write(history_path) as handle:
        handle.write(json.dumps(history.to_dict()).encode())
    last = history.epochs[-1] if history.epochs else None
    return Built(
        discard=resume_files(ctx),  # deleted once the manifest is in the store, not before: a kill keeps them
        files={"checkpoint": checkpoint, "history": history_path},
        data={"solver": solver, "device": device, "kind": config["kind"], "cell": cell, "host": host_label(),
              "train_seconds": seconds, "queue_seconds": queue_seconds,
              "resumed_from_epoch": start_epoch,
              "nfe_forward": last.nfe_forward if last else 0, "nfe_backward": last.nfe_backward if last else 0},
    )
