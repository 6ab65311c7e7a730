"""Stage 3: train one grid cell's NeuralODE on its assigned device, resumably.

Every ``checkpoint_every`` epochs the training writes a resume checkpoint into its key's folder (shared by every
build of the key) and then records its SHA-256 and epoch in ``resume.json`` (each written atomically). Each build
names its checkpoints ``resume-<epoch>-<build>.pt`` (``<build>``: the hex of its build folder) and deletes only its
own: two builds of one key at once (a host that timed out but still runs, and its cell re-dispatched to another
host) never delete each other's. The record lists every build's newest two; a build rewriting it keeps the
other builds' entries (with a remote store: those of the store's record whose files the store still holds). A
rerun resumes from the newest recorded checkpoint of any build.

With a remote store the new checkpoint and then the record are uploaded at once; a retry on another host
downloads the record (:func:`restore_resume`), and :func:`load_resume` downloads a checkpoint only when it tries
it: the newest, and the one before only if that one is unusable. A rerun resumes only from a checkpoint whose
bytes still have the recorded digest and that loads into the model; any other one (flipped bytes, truncated,
missing, another format, weights that do not fit) is discarded with a warning in the run log, and the run falls
back to the one before it, so one damaged file costs ``checkpoint_every`` epochs, not the whole training. The log
says which one was used and why the newer ones were not.

The checkpoints are deleted only once the stage's manifest is in the store (:attr:`Built.discard`): a host
killed before that leaves them for the retry. Then a build deletes its own and those of builds that have saved
nothing since it started (dead, or superseded); a build that saved since keeps its checkpoints and the record.
The earlier layout (``resume-<epoch>.pt``, written by one build at a time) is still read and resumed from.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Collection, Iterable
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
from tasks import offload, signing
from tasks.cache import BUILD_PREFIX, Built, StageContext, StageOutput, stage_task
from tasks.faults import maybe_fail
from tasks.retry import RETRYABLE
from tasks.config import ModelConfig, SolverConfig, TrainingConfig
from tasks.cores import cpu_threads, torch_threads
from tasks.grid import Cell, artifact_key
from tasks.slots import hold_device
from tasks.train_worker import Job, pack, train_in_worker

RESUME = "resume.json"  # the record of the resume checkpoints: file, epoch, SHA-256, newest first
RESUME_GENERATIONS = 2  # kept per build
# The progress artifact is updated at each logged epoch, but not more often than this: every update is an API call
# that the server pays for, and a short training's eight updates within two seconds showed nobody anything.
PROGRESS_SECONDS = 1.0
LEGACY = ""  # the attempt (build) of the earlier layout's ``resume-<epoch>.pt``, written by one build at a time
_CHECKPOINT = re.compile(r"^resume-(?P<epoch>\d{6,})(?:-(?P<attempt>[0-9a-f]{16}))?\.pt$")
_LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, TypeError)  # a checkpoint that does not load or fit

Log = logging.Logger | logging.LoggerAdapter
Entry = dict[str, Any]  # one recorded checkpoint: {"file", "epoch", "sha256"}


def host_label() -> str:
    """Who trained: ``NODECORE_HOST_LABEL`` (set it per worker) or the host name."""
    return os.environ.get("NODECORE_HOST_LABEL") or socket.gethostname()


def build_attempt(ctx: StageContext) -> str:
    """The name this build gives its resume checkpoints: the 16 hex digits of its build folder."""
    attempt = ctx.folder.name.removeprefix(BUILD_PREFIX)
    if not re.fullmatch(r"[0-9a-f]{16}", attempt):
        raise ValueError(f"{ctx.folder} is not a build folder ({BUILD_PREFIX}<16 hex digits>)")
    return attempt


def _resume_name(epoch: int, attempt: str = LEGACY) -> str:
    return f"resume-{epoch:06d}-{attempt}.pt" if attempt else f"resume-{epoch:06d}.pt"


def _attempt_of(name: str) -> str | None:
    """The build that wrote the resume checkpoint ``name`` (:data:`LEGACY` for ``resume-<epoch>.pt``), or None if
    ``name`` is no checkpoint name."""
    match = _CHECKPOINT.match(name)
    return None if match is None else match["attempt"] or LEGACY


def _is_checkpoint(name: str) -> bool:
    return name.startswith("resume-") and name.endswith(".pt")


def _ordered(entries: list[Entry]) -> list[Entry]:
    """``entries`` newest first (ties by file name), the first of each file name only."""
    unique: dict[str, Entry] = {}
    for entry in entries:
        unique.setdefault(entry["file"], entry)
    return sorted(unique.values(), key=lambda e: (e["epoch"], e["file"]), reverse=True)


def _record_payload(folder: Path, entries: list[Entry]) -> bytes:
    """What a resume record's signature covers: its entries and the stage folder (key) they belong to."""
    return json.dumps({"folder": folder.name, "checkpoints": entries}, sort_keys=True).encode()


def _write_resume_record(folder: Path, entries: list[Entry]) -> None:
    """Write ``resume.json``, signed like a manifest, so a record planted in a shared store is not resumed from."""
    record = {"checkpoints": entries, "signature": signing.sign(_record_payload(folder, entries))}
    with atomic_write(folder / RESUME) as handle:
        handle.write(json.dumps(record, indent=1).encode())


def _parse_record(folder: Path, blob: bytes) -> list[Entry]:
    """The checkpoints that the resume record ``blob`` of ``folder`` lists, newest first.

    Raises:
        ValueError, KeyError, TypeError: it is unreadable, unsigned, or names a file it may not.
    """
    record = json.loads(blob)
    entries = [{"file": e["file"], "epoch": int(e["epoch"]), "sha256": str(e["sha256"])}
               for e in record["checkpoints"]]
    if not signing.verify(_record_payload(folder, entries), str(record.get("signature", ""))):
        raise ValueError("not signed with this host's artifacts key, or signed for another stage folder")
    for entry in entries:  # the name follows from the epoch: a record never points outside the folder
        attempt = _attempt_of(entry["file"])
        if attempt is None or entry["file"] != _resume_name(entry["epoch"], attempt):
            raise ValueError(f"file {entry['file']!r} is not the resume checkpoint of epoch {entry['epoch']}")
    return entries


def _parse_resume_record(folder: Path) -> list[Entry]:
    """The checkpoints ``folder``'s signed resume record lists, newest first.

    Raises:
        FileNotFoundError: there is no record.
        OSError, ValueError, KeyError, TypeError: it is unreadable, unsigned, or names a file it may not.
    """
    return _parse_record(folder, (folder / RESUME).read_bytes())


def _read_resume_record(folder: Path, log: Log) -> list[Entry]:
    """The recorded resume checkpoints, newest first; none (with a warning) if the record is unreadable."""
    try:
        return _parse_resume_record(folder)
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("discarding the resume record %s: unreadable (%s)", folder / RESUME, err)
        return []


def save_resume(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer | CellOptimizer, *, config: dict,
                epoch: int, history: History, log: Log, attempt: str = LEGACY) -> Path:
    """Write the resume checkpoint of ``epoch`` and record its digest, keeping this build's previous generation.

    ``attempt`` names the build (:func:`build_attempt`); the record's entries of other builds are kept as they are,
    and only this build's own superseded checkpoints are deleted. Order: the ``.pt`` (atomically), then
    :data:`RESUME` (atomically) listing it, then the removal of this build's other ``.pt`` files. A kill between
    two steps leaves the older record intact and at worst an unrecorded file, which :func:`load_resume` ignores.
    """
    path = save_checkpoint(folder / _resume_name(epoch, attempt), model, config=config, epoch=epoch,
                           history=history.to_dict(), optimizer=optimizer)
    entries = _read_resume_record(folder, log)
    previous = [e for e in entries if _attempt_of(e["file"]) == attempt and e["epoch"] < epoch]
    kept = [{"file": path.name, "epoch": epoch, "sha256": file_digest(path)}, *previous][:RESUME_GENERATIONS]
    others = [e for e in entries if _attempt_of(e["file"]) != attempt]
    _write_resume_record(folder, _ordered([*kept, *others]))
    _remove_unrecorded(folder, kept, attempt)
    return path


def _remove_unrecorded(folder: Path, kept: list[Entry], attempt: str) -> list[Path]:
    """Delete ``attempt``'s checkpoints in ``folder`` that ``kept`` does not list (never another build's)."""
    recorded = {e["file"] for e in kept}
    removed = [path for path in folder.glob("resume-*.pt")
               if _attempt_of(path.name) == attempt and path.name not in recorded]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def _verified(folder: Path, entry: Entry) -> Checkpoint:
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


def load_resume(folder: Path, log: Log, *, fetch: Callable[[str, str], Path | None] | None = None,
                apply: Callable[[Checkpoint], None] | None = None) -> Checkpoint | None:
    """The newest recorded resume checkpoint in ``folder`` that verifies and loads, or None to start afresh.

    Args:
        folder: the key folder.
        log: where each discarded checkpoint is reported.
        fetch: ``fetch(file, sha256)`` brings a recorded checkpoint into ``folder`` (:meth:`StageContext.restore`),
            called for each checkpoint just before it is tried: the newest only, unless it is unusable. Its own
            errors (a store that does not answer) are raised, not taken for a bad checkpoint.
        apply: loads a verified checkpoint into the model and optimizer; its ``ValueError`` / ``RuntimeError`` /
            ``KeyError`` / ``TypeError`` (weights that do not fit) make the checkpoint unusable, and it must then
            leave them as they were.

    A checkpoint that does not verify, load or apply is discarded (deleted here) with a warning naming the file
    and why: damaged (digest mismatch), missing, unreadable, or not fitting the model; the one before it is tried
    next, and the one used is logged with the newer ones skipped. An unrecorded ``resume-<epoch>.pt`` (the
    earlier layout: written by a run killed before recording it) is deleted with a warning; an unrecorded
    checkpoint of a build (``resume-<epoch>-<build>.pt``) is left alone, since that build may be about to record
    it. Older recorded checkpoints are kept unchecked until they are needed.
    """
    entries = _read_resume_record(folder, log)
    recorded = {e["file"] for e in entries}
    for path in sorted(folder.glob("resume-*.pt")):
        if path.name in recorded:
            continue
        if _attempt_of(path.name) in (None, LEGACY):
            log.warning("discarding the resume checkpoint %s: not recorded in %s", path, RESUME)
            path.unlink(missing_ok=True)
        else:
            log.info("ignoring the resume checkpoint %s: not (yet) recorded in %s by its build", path, RESUME)
    chosen, discarded, skipped = None, set(), []
    try:
        for entry in entries:
            if fetch is not None:
                fetch(entry["file"], entry["sha256"])
            try:
                checkpoint = _verified(folder, entry)
                if apply is not None:
                    apply(checkpoint)
                chosen = checkpoint
            except _LOAD_ERRORS as err:
                log.warning("discarding the resume checkpoint %s (epoch %d): %s", folder / entry["file"],
                            entry["epoch"], err)
                (folder / entry["file"]).unlink(missing_ok=True)
                discarded.add(entry["file"])
                skipped.append(f"{entry['file']} (epoch {entry['epoch']}): {err}")
                continue
            if skipped:
                log.info("resuming from the resume checkpoint %s (epoch %d), the newest that loads; skipped %s",
                         folder / entry["file"], entry["epoch"], "; ".join(skipped))
            break
    finally:  # also when a fetch fails (a store that does not answer): the deleted files leave the record
        if discarded or (not entries and (folder / RESUME).exists()):  # an unreadable record is replaced too
            _forget(folder, discarded, entries)
    return chosen


def _forget(folder: Path, discarded: set[str], entries: list[Entry]) -> None:
    """Rewrite ``folder``'s resume record without the files ``discarded``, read again just before: what another
    build of this key (a superseded run still going) recorded while :func:`load_resume` tried its checkpoints is
    kept. Where that second read fails, the first read's ``entries`` are kept instead (an unreadable record,
    warned about by the first read, becomes an empty one)."""
    try:
        current = _parse_resume_record(folder)
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError, TypeError):
        current = entries
    _write_resume_record(folder, [e for e in current if e["file"] not in discarded])


def _stored_record(ctx: StageContext) -> list[Entry] | None:
    """The entries of the store's resume record of the key folder, or None if the store holds none.

    Raises:
        ValueError, KeyError, TypeError: the store's record is unreadable, unsigned, or names a file it may not.
    """
    assert ctx.store is not None
    blob = ctx.store.read_bytes(f"{ctx.key_folder.relative_to(ctx.root).as_posix()}/{RESUME}")
    return None if blob is None else _parse_record(ctx.key_folder, blob)


def share_resume(ctx: StageContext, path: Path, log: Log, *, attempt: str = LEGACY) -> None:
    """Put the new resume checkpoint ``path`` of build ``attempt`` and then the record in the store; then delete
    from the store this build's checkpoints that the record no longer lists.

    The record uploaded lists this build's own generations and the other builds' checkpoints that the store's
    record (read just before) or this host's lists and the store still holds: a build running at the same time on
    another host loses no entry, unless both rewrite the record at the same instant (then the lost entry comes
    back with that build's next checkpoint; its file is never deleted). Nothing to do for a local store, where
    :func:`save_resume` has done it all.
    """
    if ctx.store is None or ctx.store.is_local:
        return
    held = {p.name for p in ctx.shared()}
    try:
        stored = _stored_record(ctx) or []
    except (ValueError, KeyError, TypeError) as err:
        log.warning("replacing the resume record %s in %s: unreadable (%s)", RESUME, ctx.store.location, err)
        stored = []
    local = _read_resume_record(ctx.key_folder, log)
    mine = [e for e in local if _attempt_of(e["file"]) == attempt]
    others = [e for e in [*stored, *local] if _attempt_of(e["file"]) != attempt and e["file"] in held]
    _write_resume_record(ctx.key_folder, _ordered([*mine, *others]))
    ctx.share(path, ctx.key_folder / RESUME)  # the record last
    recorded = {e["file"] for e in mine}
    ctx.unshare(*(ctx.key_folder / name for name in sorted(held)
                  if _attempt_of(name) == attempt and name not in recorded))


def restore_resume(ctx: StageContext, log: Log) -> None:
    """Merge the store's resume record into the key folder's (another host's, after a retry): the record then
    lists the checkpoints of both, and :func:`load_resume` downloads the one it tries.

    Nothing to do for a local store, or where the store holds no record (a local one is then kept). This host's
    own entries are kept, too, when the store's record is older or does not verify (a retry on this host after
    its last record upload failed, or a record planted in the store): what this host trained is never discarded
    for an older or unsigned record.
    """
    if ctx.store is None or ctx.store.is_local:
        return
    try:
        local = _parse_resume_record(ctx.key_folder)
    except (OSError, ValueError, KeyError, TypeError):
        local = []
    try:
        stored = _stored_record(ctx)
    except (ValueError, KeyError, TypeError) as err:
        log.warning("ignoring the resume record %s in %s: unreadable (%s)", RESUME, ctx.store.location, err)
        stored, store_says = [], "unreadable or not signed"
    else:
        if stored is None:
            return
        store_says = f"older (epoch {stored[0]['epoch']})" if stored else "empty"
    if local and (not stored or stored[0]["epoch"] < local[0]["epoch"]):
        log.warning("keeping this host's resume record (epoch %d): the store's is %s", local[0]["epoch"], store_says)
    if stored or local:
        _write_resume_record(ctx.key_folder, _ordered([*stored, *local]))


def resume_checkpoints(ctx: StageContext) -> set[str]:
    """The names of the key folder's resume checkpoints, here or in the store: what a build notes when it starts,
    so that :func:`resume_files` tells the builds that have saved since from those that have not."""
    return ({p.name for p in ctx.key_folder.glob("resume-*.pt")}
            | {p.name for p in ctx.shared() if _is_checkpoint(p.name)})


def resume_files(ctx: StageContext, *, attempt: str = LEGACY, seen: Collection[str] = ()) -> tuple[Path, ...]:
    """The resume files of the key folder, here or in the store, that a finished training discards once its
    manifest is in the store (see :attr:`Built.discard`), the record first.

    They are this build's (``attempt``) checkpoints and those of every build that has written none since this
    one started (all its checkpoints are among ``seen``, those present then): dead, or superseded. A build
    that saved a checkpoint since may still be running: its checkpoints and the record (which lists them) stay.
    """
    folder, seen = ctx.key_folder, set(seen)
    names = resume_checkpoints(ctx)
    builds: dict[str | None, set[str]] = {}
    for name in names:
        builds.setdefault(_attempt_of(name), set()).add(name)
    live = {build for build, files in builds.items() if build != attempt and not files <= seen}
    record = () if live else (folder / RESUME,)
    return (*record, *(folder / name for name in sorted(names) if _attempt_of(name) not in live))


class CellOptimizer:
    """The cell's Adam, built only where this process needs one: to step it (a training here) or to check that a
    resume checkpoint's state fits the model.

    A training in a stage worker needs neither: the worker builds its own, and this process only carries its state
    between the worker and the resume checkpoints. Building a torch optimizer first imports ``torch._dynamo`` (about
    1.1 s), which held back the hand-over of a run's first training. It stands in for the optimizer where the task
    passes one on (:func:`save_resume`, :func:`tasks.train_worker.pack` and ``unpack_into``).
    """

    def __init__(self, parameters: Callable[[], Iterable[nn.Parameter]], *, lr: float) -> None:
        self._parameters, self._lr = parameters, lr
        self._adam: torch.optim.Adam | None = None
        self._state: dict[str, Any] | None = None  # loaded into the Adam when it is built; None: fresh

    def built(self) -> torch.optim.Adam:
        """The Adam itself, built now if need be, holding the state taken so far."""
        if self._adam is None:
            adam = torch.optim.Adam(self._parameters(), lr=self._lr)
            if self._state is not None:
                adam.load_state_dict(self._state)
            self._adam, self._state = adam, None
        return self._adam

    def state_dict(self) -> dict[str, Any] | None:
        """The optimizer's ``state_dict()``; None while it is fresh and not built (a worker then starts a fresh one)."""
        return self._adam.state_dict() if self._adam is not None else self._state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take ``state``: loaded (checked and cast as torch does) into the Adam if it is built, else kept as it is.

        Unbuilt, it takes only states of this cell's own optimizer (the stage worker's); a state read from a
        checkpoint goes through :meth:`built`, which checks that it fits.
        """
        if self._adam is not None:
            self._adam.load_state_dict(state)
        else:
            self._state = state

    def follow_parameters(self) -> None:
        """After the model moved to its device: a built Adam's state moves too (``load_state_dict`` casts it to
        the parameters' device); an unbuilt one has nothing to move (built later, it loads its state onto the
        parameters where they are then)."""
        if self._adam is not None:
            self._adam.load_state_dict(self._adam.state_dict())

    def reset(self) -> None:
        """Fresh again: what any state taken or built so far is dropped."""
        self._adam, self._state = None, None


def build_cell_model(field: StageOutput, root: Path, solver: str, config: SolverConfig) -> tuple[nn.Module, dict]:
    """The cell's untrained model and its config: the field stage's initial weights, the cell's solver."""
    initial = load_checkpoint(field.path(root, "field"))
    model_config = dict(initial.config)
    if model_config["kind"] != "deq":
        model_config["ode"] = {"solver": solver, "sensitivity": config.sensitivity, "atol": config.atol,
                               "rtol": config.rtol, "atol_adjoint": config.atol_adjoint,
                               "rtol_adjoint": config.rtol_adjoint, "step_size": config.step_size,
                               "max_steps": config.max_steps, "seminorm": config.seminorm,
                               "interpolator": config.interpolator}
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
    cell_name: str | None = None,
) -> Built:
    """Train on ``device`` holding one of its slots; checkpoint every few epochs and resume from there.

    Waiting for the device slot (see :mod:`tasks.slots`) is logged and shown in the progress artifact;
    ``queue_seconds`` (the wait) is returned apart from ``train_seconds``. Resume checkpoints are trusted only
    while their digest matches (see :func:`load_resume`).

    ``run_device`` is the same device as this process names it, when that differs (a dispatched cell for
    ``cuda:3`` runs with ``CUDA_VISIBLE_DEVICES=3`` and trains on ``cuda:0``); it is not part of the key.
    ``cell_name`` is the grid's name of the cell (:attr:`tasks.grid.Cell.name`, with its seed where the grid sweeps
    several), shown in logs, progress artifacts and plot titles; not part of the key either. Without it the name is
    made from the solver, device and model kind.
    """
    logger = get_run_logger()
    cell = cell_name or Cell(solver=solver, device=device, model=field.data["kind"]).name
    X, y, _ = read_dataset(dataset.path(ctx.root, "train"))
    classifier, config = build_cell_model(field, ctx.root, solver, solver_config)
    model_config = dict(config)  # what builds the model (a stage worker rebuilds it from this)
    optimizer = CellOptimizer(classifier.parameters, lr=training.lr)  # built only if it is needed here
    config |= {"training": training.model_dump(mode="json"), "device": device}

    history, start_epoch = History(), 0
    attempt = build_attempt(ctx)
    restore_resume(ctx, logger)  # the store's record of every build's checkpoints, when the store is remote
    seen = resume_checkpoints(ctx)  # what other builds have written so far (see resume_files)
    fresh = copy.deepcopy(classifier.state_dict())

    def resume_into(checkpoint: Checkpoint) -> None:
        """Load ``checkpoint`` into the model and optimizer, or (raising) leave them untrained."""
        try:
            load_weights(classifier, checkpoint.state_dict, source=ctx.key_folder / "resume")
            optimizer.built().load_state_dict(checkpoint.optimizer_state)  # a state that does not fit raises
        except BaseException:
            classifier.load_state_dict(fresh)
            optimizer.reset()
            raise

    remote = ctx.store is not None and not ctx.store.is_local
    resume = load_resume(ctx.key_folder, logger, fetch=ctx.restore if remote else None, apply=resume_into)
    if resume is not None:
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
        optimizer.follow_parameters()
        X, y, span = X.to(local), y.to(local), depth_grid(model.t_end, model.t_points, device=local)

        # The epochs after which a resume checkpoint is written (not after the last: the stage output follows).
        checkpoint_epochs = frozenset(range(training.checkpoint_every, training.epochs, training.checkpoint_every))

        shown = time.monotonic()  # when the progress artifact was last updated

        def on_epoch(stats: EpochStats) -> None:
            nonlocal shown
            history.epochs.append(stats)
            done = stats.epoch + 1
            if done % training.log_every == 0 or done == training.epochs:
                logger.info("%s: epoch %d/%d loss %.4f accuracy %.4f nfe %d/%d", cell, done, training.epochs,
                            stats.loss, stats.accuracy, stats.nfe_forward, stats.nfe_backward)
                if time.monotonic() - shown >= PROGRESS_SECONDS:  # 100 % is set when the training ends
                    update_progress_artifact(progress_id, progress(done))
                    shown = time.monotonic()
            if done in checkpoint_epochs:
                saved = save_resume(ctx.key_folder, classifier, optimizer, config=config, epoch=done, history=history,
                                    log=logger, attempt=attempt)
                share_resume(ctx, saved, logger, attempt=attempt)
                maybe_fail("train", cell)  # test hook: fails after a checkpoint, so a retry resumes

        started = time.perf_counter()
        # A CPU training's epochs run in a stage worker process where the run has them (tasks.offload): trainings
        # in threads of this process would take turns on the GIL. In step with on_epoch, with the same results.
        job = None
        if local == "cpu" and offload.active_workers() > 0:
            job = Job(model_config=model_config, state=pack(classifier, optimizer),
                      train_set=dataset.path(ctx.root, "train"), t_end=model.t_end, t_points=model.t_points,
                      epochs=training.epochs, lr=training.lr, batch_size=training.batch_size, start_epoch=start_epoch,
                      threads=threads or 1, sync_epochs=checkpoint_epochs)
        with torch_threads(threads):
            if job is None or not train_in_worker(classifier, optimizer, job, on_epoch):
                train(classifier, X, y, t_span=span, epochs=training.epochs, lr=training.lr,
                      batch_size=training.batch_size, optimizer=optimizer.built(), start_epoch=start_epoch,
                      callback=on_epoch)
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
        # deleted once the manifest is in the store, not before: a kill keeps them
        discard=resume_files(ctx, attempt=attempt, seen=seen),
        files={"checkpoint": checkpoint, "history": history_path},
        data={"solver": solver, "device": device, "kind": config["kind"], "cell": cell, "host": host_label(),
              "train_seconds": seconds, "queue_seconds": queue_seconds,
              "resumed_from_epoch": start_epoch,
              "nfe_forward": last.nfe_forward if last else 0, "nfe_backward": last.nfe_backward if last else 0},
    )
