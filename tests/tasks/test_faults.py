"""Unit tests of tasks.faults: the NODECORE_FAULTS hook and which failures are retried."""

from __future__ import annotations

from collections import Counter

import pytest
from prefect.states import Failed

from nodecore.errors import SolverError
from tasks import faults
from tasks.faults import InjectedPermanentFault, InjectedTransientFault, is_retryable, maybe_fail


@pytest.fixture(autouse=True)
def fresh_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faults, "_attempts", Counter())


def test_unset_or_other_stages_do_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(faults.ENV, raising=False)
    maybe_fail("train", "rk4@cpu")
    monkeypatch.setenv(faults.ENV, "evaluate:permanent, generate:transient:3")
    maybe_fail("train", "rk4@cpu")


def test_transient_fault_fails_the_first_attempts_of_each_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.ENV, "train:transient:2")
    for _ in range(2):
        with pytest.raises(InjectedTransientFault, match="train"):
            maybe_fail("train", "rk4@cpu")
    maybe_fail("train", "rk4@cpu")  # the third attempt passes
    with pytest.raises(InjectedTransientFault, match="euler@cpu"):
        maybe_fail("train", "euler@cpu")  # another cell counts its own attempts


def test_permanent_fault_always_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.ENV, "train:transient:1,evaluate:permanent")
    for _ in range(3):
        with pytest.raises(InjectedPermanentFault, match="injected permanent failure in stage 'evaluate'"):
            maybe_fail("evaluate", "rk4@cpu")


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (InjectedTransientFault("x"), True),
        (RuntimeError("CUDA out of memory"), True),
        (OSError("disk hiccup"), True),
        (InjectedPermanentFault("x"), False),
        (ValueError("bad input"), False),
        (KeyError("field"), False),
        (SolverError("diverged"), False),
    ],
)
def test_only_curable_failures_are_retried(error: BaseException, retryable: bool) -> None:
    assert is_retryable(None, None, Failed(data=error)) is retryable
