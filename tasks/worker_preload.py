"""The first module the stage workers' forkserver imports (:data:`tasks.offload.PRELOAD`); nothing else imports it.

It changes two things in that process only, and so in every worker forked from it:

- A worker does not re-run the flow's main script. Python 3.11's multiprocessing sends each new process the path
  of the parent's ``__main__`` and runs it there as ``__mp_main__`` (its forkserver's own ``"__main__"`` preload
  never receives that path), so every worker imported ``flows/train_flow.py``, and with it Prefect and the flows
  (0.3-1.5 s each, before its first job). A worker runs module-level functions of ``tasks`` and ``nodecore``
  only, found by their module names: nothing defined in the flow's ``__main__`` is ever sent to one.
- The forkserver ends without Python's finalization (``os._exit`` after the ``atexit`` handlers, which this
  registers first, so it runs last): it holds the flow's stdout and stderr, and tearing down torch, matplotlib
  and nodecore kept them open for about a second after the flow process had ended. It ends only once every worker
  has (each holds its "alive" pipe), and has nothing of its own to flush but stdio.
"""

from __future__ import annotations

import atexit
import os
import sys
from multiprocessing import spawn


def _leave_main_alone(_main: str) -> None:
    """In place of multiprocessing's ``_fixup_main_from_path`` / ``_fixup_main_from_name``: keep the worker's
    ``__main__`` (the forkserver's) instead of importing the parent's."""


def _exit_now() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(0)


spawn._fixup_main_from_path = _leave_main_alone  # type: ignore[attr-defined]
spawn._fixup_main_from_name = _leave_main_alone  # type: ignore[attr-defined]
atexit.register(_exit_now)
