"""A CPU training's epochs in a stage worker (tasks.train_worker): the same results, in step with its task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nodecore.checkpoints import build_model, classifier_config
from nodecore.dataset_io import write_dataset
from nodecore.datasets import generate_points
from nodecore.training import EpochStats, depth_grid, train
from tasks import offload
from tasks.train_worker import Job, pack, train_in_worker

EPOCHS, SYNC = 6, frozenset({2, 4})
T_END, T_POINTS = 1.0, 3


def _setup(tmp_path: Path, *, solver: str = "rk4", lr: float = 0.02, start_epoch: int = 0):
    X, y = generate_points(64, "moons", noise=0.1, seed=0)
    path = write_dataset(tmp_path / "train.parquet", X, y, metadata={"dataset_type": "moons", "params": {}, "seed": 0})
    config = classifier_config("node", dim=2, n_classes=2, augment_dims=0, ode={"solver": solver})
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    job = Job(model_config=config, state=pack(model, optimizer), train_set=path, t_end=T_END, t_points=T_POINTS,
              epochs=EPOCHS, lr=lr, batch_size=16, start_epoch=start_epoch, threads=1, sync_epochs=SYNC)
    return X, y, model, optimizer, job


def _in_place(X, y, model, optimizer, job: Job) -> list[EpochStats]:
    seen: list[EpochStats] = []
    train(model, X, y, t_span=depth_grid(T_END, T_POINTS), epochs=job.epochs, lr=job.lr, batch_size=job.batch_size,
          optimizer=optimizer, start_epoch=job.start_epoch, callback=seen.append)
    return seen


def _same_numbers(a: list[EpochStats], b: list[EpochStats]) -> bool:
    return [(s.epoch, s.loss, s.accuracy, s.nfe_forward, s.nfe_backward) for s in a] == \
        [(s.epoch, s.loss, s.accuracy, s.nfe_forward, s.nfe_backward) for s in b]


def test_without_a_pool_nothing_runs_and_the_caller_trains_in_place(tmp_path):
    _, _, model, optimizer, job = _setup(tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert train_in_worker(model, optimizer, job, lambda stats: None) is False
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_epochs_in_a_worker_give_the_in_place_results_bit_for_bit(tmp_path):
    X, y, model, optimizer, job = _setup(tmp_path)
    reference_model = build_model(job.model_config)
    reference_optimizer = torch.optim.Adam(reference_model.parameters(), lr=job.lr)
    reference_model.load_state_dict(model.state_dict())
    reference_optimizer.load_state_dict(optimizer.state_dict())
    expected = _in_place(X, y, reference_model, reference_optimizer, job)

    seen, weights_at_sync = [], {}

    def on_epoch(stats: EpochStats) -> None:
        seen.append(stats)
        if stats.epoch + 1 in SYNC:  # the task's model holds this epoch's weights (what a resume checkpoint saves)
            weights_at_sync[stats.epoch + 1] = {k: v.clone() for k, v in model.state_dict().items()}

    with offload.worker_processes(1):
        assert train_in_worker(model, optimizer, job, on_epoch) is True
    assert _same_numbers(seen, expected)
    for name, value in reference_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert optimizer.state_dict()["state"][0]["step"] == reference_optimizer.state_dict()["state"][0]["step"]
    assert set(weights_at_sync) == SYNC
    assert any(not torch.equal(weights_at_sync[2][k], weights_at_sync[4][k]) for k in weights_at_sync[2])


def test_a_resumed_job_runs_only_the_remaining_epochs(tmp_path):
    X, y, model, optimizer, job = _setup(tmp_path, start_epoch=4)
    seen: list[EpochStats] = []
    with offload.worker_processes(1):
        train_in_worker(model, optimizer, job, seen.append)
    assert [s.epoch for s in seen] == [4, 5]


def test_a_failing_task_callback_stops_the_worker_and_propagates(tmp_path):
    _, _, model, optimizer, job = _setup(tmp_path)
    seen: list[int] = []

    def fail_at_first_checkpoint(stats: EpochStats) -> None:
        seen.append(stats.epoch)
        if stats.epoch + 1 == 2:
            raise RuntimeError("injected after the checkpoint")

    with offload.worker_processes(1):
        with pytest.raises(RuntimeError, match="injected after the checkpoint"):
            train_in_worker(model, optimizer, job, fail_at_first_checkpoint)
        # the worker stopped there and is free: the next job runs on it to the end
        again: list[EpochStats] = []
        _, _, model2, optimizer2, job2 = _setup(tmp_path / "again")
        assert train_in_worker(model2, optimizer2, job2, again.append)
    assert seen == [0, 1]
    assert [s.epoch for s in again] == list(range(EPOCHS))


def test_the_workers_own_error_comes_back_with_its_type(tmp_path):
    _, _, model, optimizer, job = _setup(tmp_path)
    bad = Job(**{**job.__dict__, "lr": -1.0})  # Adam refuses a negative learning rate in the worker
    with offload.worker_processes(1), pytest.raises(ValueError, match="learning rate"):
        train_in_worker(model, optimizer, bad, lambda stats: None)
