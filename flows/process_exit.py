"""The end of a console run: once its ``atexit`` handlers have run, the process exits without Python's finalization.

Tearing down torch, Prefect, matplotlib and their threads' objects cost a run about a second after its last line
(more on a busy host) and saves nothing: by then the flow run's state, every task run's, its logs and events are
on the server (Prefect drains its services when Python's threads are joined, and its log handlers flush in
logging's ``atexit`` handler), and the run's files were written and closed by its stages.

:func:`skip_finalization` registers the handler that does it; it must run before anything else registers one
(``import logging`` does), since ``atexit`` calls the last registered first and this must come last.
:func:`exit` then ends the process with a status; a process that ends any other way (an uncaught exception, a
``SystemExit`` raised elsewhere, an interrupt) is finalized as usual.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import NoReturn

_status: int | None = None  # set by exit(): the status the finished run exits with


def skip_finalization() -> None:
    """Exit at once after the other ``atexit`` handlers, with :func:`exit`'s status (call this first of all)."""
    atexit.register(_exit_now)


def exit(status: int) -> NoReturn:  # noqa: A001  (sys.exit's counterpart)
    """End the process with ``status``: through the ``atexit`` handlers, then (see :func:`skip_finalization`) out."""
    global _status
    _status = status
    sys.exit(status)


def _exit_now() -> None:
    if _status is None:  # not ended by exit(): finalize as usual
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(_status)
