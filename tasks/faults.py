"""Retry policy of the stages, and a fault-injection hook for testing it.

``NODECORE_FAULTS`` (read at call time) injects failures, e.g. ``train:transient:1`` fails the first
attempt of each training cell with a retryable error, ``evaluate:permanent`` fails every evaluation with a
non-retryable one, and ``evaluate:while:/tmp/broken`` fails it (non-retryably) while that file exists, so
a test can "fix the problem" and retry the run. Several entries are separated by commas. Unset, it does
nothing.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from typing import Any

from nodecore.errors import SolverError

ENV = "NODECORE_FAULTS"
_attempts: Counter[tuple[str, str]] = Counter()
_lock = threading.Lock()


class InjectedTransientFault(RuntimeError):
    """A failure injected through NODECORE_FAULTS that a retry cures."""


class InjectedPermanentFault(ValueError):
    """A failure injected through NODECORE_FAULTS that no retry cures."""


# Failures that a retry cannot cure: bad input, deterministic numerical failure.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, KeyError, IndexError, SolverError)


def maybe_fail(stage: str, scope: str = "") -> None:
    """Raise the failure NODECORE_FAULTS asks for at ``stage`` (``scope`` tells grid cells apart)."""
    for entry in filter(None, (e.strip() for e in os.environ.get(ENV, "").split(","))):
        parts = entry.split(":")
        if parts[0] != stage:
            continue
        kind = parts[1] if len(parts) > 1 else "transient"
        if kind == "while":
            flag = ":".join(parts[2:])
            if os.path.exists(flag):
                raise InjectedPermanentFault(f"injected failure in stage {stage!r} while {flag} exists ({ENV})")
            continue
        if kind == "permanent":
            raise InjectedPermanentFault(f"injected permanent failure in stage {stage!r} ({ENV}={entry!r})")
        times = int(parts[2]) if len(parts) > 2 else 1
        with _lock:
            _attempts[(stage, scope)] += 1
            attempt = _attempts[(stage, scope)]
        if attempt <= times:
            raise InjectedTransientFault(
                f"injected transient failure {attempt}/{times} in stage {stage!r} {scope} ({ENV}={entry!r})"
            )


def is_retryable(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry unless the failure is one a retry cannot cure."""
    error = state.result(raise_on_failure=False)
    return not isinstance(error, PERMANENT_ERRORS)
