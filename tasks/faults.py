"""Retry policy of the stages, and a fault-injection hook for testing it.

``NODECORE_FAULTS`` (read at call time) injects failures, e.g. ``train:transient:1`` fails the first
attempt of each training cell with a retryable error, ``evaluate:permanent`` fails every evaluation with a
non-retryable one, and ``evaluate:while:/tmp/broken`` fails it (non-retryably) while that file exists, so
a test can "fix the problem" and retry the run; ``train:hang`` stops the training dead at its first
checkpoint (as a host that died would, for a test to kill it there). Several entries are separated by commas. Unset, it does
nothing. :func:`validate_faults` refuses a malformed value up front, naming the entry and the valid forms.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from nodecore.errors import SolverError

ENV = "NODECORE_FAULTS"
STAGES = ("generate", "train", "evaluate")  # the stages that call maybe_fail (a test keeps this in step)
FORMS = "STAGE, STAGE:transient, STAGE:transient:N (N >= 1), STAGE:permanent, STAGE:while:PATH, STAGE:hang"
_attempts: Counter[tuple[str, str]] = Counter()
_lock = threading.Lock()


class InjectedTransientFault(RuntimeError):
    """A failure injected through NODECORE_FAULTS that a retry cures."""


class InjectedPermanentFault(ValueError):
    """A failure injected through NODECORE_FAULTS that no retry cures."""


# Failures that a retry cannot cure: bad input, deterministic numerical failure.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, KeyError, IndexError, SolverError)


@dataclass(frozen=True)
class Fault:
    """One NODECORE_FAULTS entry: fail ``stage`` the first ``times`` attempts, always, or while ``flag`` exists."""

    entry: str
    stage: str
    kind: Literal["transient", "permanent", "while", "hang"]
    times: int = 1
    flag: str = ""


def _parse(entry: str) -> Fault:
    stage, _, rest = entry.partition(":")
    kind, _, argument = rest.partition(":")
    if stage not in STAGES:
        problem = f"unknown stage {stage!r}"
    elif kind in ("", "transient") and (not argument or argument.isdecimal() and int(argument) >= 1):
        return Fault(entry, stage, "transient", int(argument or 1))
    elif kind == "transient":
        problem = f"{argument!r} is not a count (an integer >= 1)"
    elif kind in ("permanent", "hang") and not argument:
        return Fault(entry, stage, kind)
    elif kind == "while" and argument:
        return Fault(entry, stage, "while", flag=argument)
    else:
        problem = "not one of the valid forms"
    raise ValueError(f"{ENV} entry {entry!r}: {problem}; valid entries: {FORMS}, with STAGE one of "
                     f"{', '.join(STAGES)} (several separated by commas)")


def validate_faults(value: str | None = None) -> list[Fault]:
    """Parse NODECORE_FAULTS (``value``, or the environment's when None) into its entries.

    Raises:
        ValueError: a malformed entry; the message names it and the valid forms.
    """
    text = os.environ.get(ENV, "") if value is None else value
    return [_parse(entry) for entry in filter(None, (e.strip() for e in text.split(",")))]


def maybe_fail(stage: str, scope: str = "") -> None:
    """Raise the failure NODECORE_FAULTS asks for at ``stage`` (``scope`` tells grid cells apart)."""
    for fault in validate_faults():
        if fault.stage != stage:
            continue
        if fault.kind == "while":
            if os.path.exists(fault.flag):
                raise InjectedPermanentFault(f"injected failure in stage {stage!r} while {fault.flag} exists ({ENV})")
            continue
        if fault.kind == "hang":
            threading.Event().wait()  # never returns: only a kill ends this process
        if fault.kind == "permanent":
            raise InjectedPermanentFault(f"injected permanent failure in stage {stage!r} ({ENV}={fault.entry!r})")
        with _lock:
            _attempts[(stage, scope)] += 1
            attempt = _attempts[(stage, scope)]
        if attempt <= fault.times:
            raise InjectedTransientFault(
                f"injected transient failure {attempt}/{fault.times} in stage {stage!r} {scope} ({ENV}={fault.entry!r})"
            )


def is_retryable(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry unless the failure is one a retry cannot cure.

    Besides ``PERMANENT_ERRORS``, a lost Prefect API is not retried: an ``httpx.TransportError`` (e.g.
    ``ConnectError``), raised or in the chain of causes, on a request to the current ``PREFECT_API_URL``.
    Prefect's client has already retried that request for about a minute, and a retried attempt needs
    the API too. A transport error on any other URL stays retryable.
    """
    import httpx
    from prefect.settings import get_current_settings

    error = state.result(raise_on_failure=False)
    if isinstance(error, PERMANENT_ERRORS):
        return False
    api_url = (get_current_settings().api.url or "").rstrip("/")
    for _ in range(16):  # the error and its causes; a cycle in the chain ends the walk
        if not isinstance(error, BaseException):
            break
        if isinstance(error, httpx.TransportError) and api_url:
            try:
                url = str(error.request.url)
            except RuntimeError:  # raised without a request
                url = ""
            if url == api_url or url.startswith(f"{api_url}/"):
                return False
        error = error.__cause__ or error.__context__
    return True
