"""Trainings on a Dask cluster are spread over its hosts (flows/placement.py)."""

from __future__ import annotations

import contextlib

import dask

from flows.placement import interleaved_workers, training_placements

WORKERS = {
    "tcp://10.0.2.2:4001": {"host": "10.0.2.2"},
    "tcp://10.0.1.2:4001": {"host": "10.0.1.2"},
    "tcp://10.0.1.2:4002": {"host": "10.0.1.2"},
    "tcp://10.0.3.2:4001": {"host": "10.0.3.2"},
}


class _Client:
    def __init__(self, workers: dict) -> None:
        self.workers = workers

    def scheduler_info(self, n_workers: int = 5) -> dict:
        assert n_workers == -1  # every worker, not the first five
        return {"workers": self.workers}


class DaskTaskRunner:  # named as prefect-dask's, which is all training_placements looks at
    def __init__(self, workers: dict) -> None:
        self.client = _Client(workers)


def test_workers_are_taken_from_each_host_in_turn() -> None:
    assert interleaved_workers(WORKERS) == ["tcp://10.0.1.2:4001", "tcp://10.0.2.2:4001", "tcp://10.0.3.2:4001",
                                            "tcp://10.0.1.2:4002"]
    assert interleaved_workers({}) == []


def test_each_training_is_loosely_bound_to_the_next_worker_in_turn() -> None:
    annotations = []
    for placement in training_placements(DaskTaskRunner(WORKERS), 5):
        with placement:
            annotations.append(dask.get_annotations())
    order = interleaved_workers(WORKERS)
    assert [a["workers"] for a in annotations] == [[order[i % 4]] for i in range(5)]
    assert all(a["allow_other_workers"] is True for a in annotations)  # a dead worker's training runs elsewhere
    assert dask.get_annotations() == {}


def test_other_task_runners_and_an_empty_cluster_place_nothing() -> None:
    class ThreadPoolTaskRunner:
        pass

    for runner in (ThreadPoolTaskRunner(), DaskTaskRunner({})):
        placements = training_placements(runner, 2)
        assert len(placements) == 2 and all(isinstance(p, contextlib.nullcontext) for p in placements)
