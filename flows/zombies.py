"""A dead host's cell is noticed without a timeout: a server automation marks a cell flow run ``Crashed`` once
its heartbeats stop, and the dispatch retries crashed cells (:mod:`flows.dispatch`).

Prefect 3.9 flow runs send a heartbeat event every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (180 by default,
30 at least). A self-hosted server acts on them only through an automation (Prefect's "detect zombie flows"
recipe): after each heartbeat of a cell flow run, expect another event of that run (a heartbeat or a state
change) within a window, else set the run ``Crashed``. Only runs of the cell flow are watched; a user's other
flows on the same server are not touched.

The automation is one per server, so a live run is never crashed by a window that is too short for it:

* a dispatch pins the period of the cell run it starts (:func:`heartbeat_env`): the period the window was made
  for, whatever the worker host's own setting;
* the window only grows: a dispatcher whose period is shorter than the one the window was made for keeps the
  longer window (its cells then send more heartbeats than needed, which is harmless).

Where the server refuses the automation (an API key without the permission, a server without automations), the
dispatcher watches its own cells instead (:func:`silence_watch`, :func:`crash_if_silent`): it reads each running
cell run's newest event and sets the run Crashed itself once the same window has passed without one.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta, timezone
from typing import Any

from flows.cell_flow import CELL_FLOW_NAME

AUTOMATION_NAME = f"{CELL_FLOW_NAME}: crash runs whose heartbeats stopped"
MISSED_HEARTBEATS = 3  # periods without a heartbeat before a run counts as dead (Prefect's own rule of thumb)
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
_log = logging.getLogger(__name__)


def heartbeat_seconds() -> int | None:
    """The heartbeat period this host gives the cell runs it dispatches: its ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``,
    else Prefect's default (180 s). Not this process's own setting: a console run turns its own heartbeats off
    (``flows.train_flow.without_flow_heartbeats``)."""
    from prefect.settings.models.flows import FlowsSettings

    value = os.environ.get(HEARTBEAT_ENV)
    return max(int(value), 30) if value else FlowsSettings.model_fields["heartbeat_frequency"].default


def silence_watch(automation: timedelta | None) -> float | None:
    """How long a dispatcher lets a running cell run go without an event before it crashes the run itself: None
    where the server's automation does it (``automation``, from :func:`ensure_zombie_detection`) or where cell runs
    send no heartbeats; else :data:`MISSED_HEARTBEATS` periods of :func:`heartbeat_seconds`."""
    period = heartbeat_seconds()
    if automation is not None or period is None:
        return None
    return float(MISSED_HEARTBEATS * period)


def crash_if_silent(client: Any, run: Any, silent_after: float) -> bool:
    """Set the running flow run ``run`` Crashed if the server has no event of it (a heartbeat, a state change) from
    the last ``silent_after`` seconds, nor its Running state; whether it did (the server accepted it).

    Never on a guess: an events API that does not answer, a server that has recorded no event of the run at all
    (it does not keep events) and a refused or failed state change each leave the run alone, with a warning.
    """
    from prefect.client.schemas.objects import StateType
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
    from prefect.states import Crashed

    now = datetime.now(timezone.utc)
    since = now - timedelta(seconds=silent_after)
    if run.state is None or not run.state.is_running() or run.state.timestamp >= since:
        return False

    def newest_since(moment: datetime) -> list[Any]:
        return client.read_events(filter=EventFilter(
            occurred=EventOccurredFilter(since=moment, until=now + timedelta(seconds=60)),
            event=EventNameFilter(prefix=["prefect.flow-run."]),
            resource=EventResourceFilter(id=[f"prefect.flow-run.{run.id}"])), limit=1).events

    try:
        if newest_since(since):
            return False
        if not newest_since(run.start_time or run.state.timestamp):
            _log.warning("the server has no event of flow run %s at all (does it keep events?): not taking its "
                         "silence for a dead host", run.id)
            return False
        result = client.set_flow_run_state(run.id, Crashed(
            message=f"no heartbeat for {silent_after:.0f} s: its host is gone (noticed by its dispatcher: the server "
                    "has no automation)"))
    except Exception as err:  # noqa: BLE001 - the server's own errors vary; the cell timeout still holds
        _log.warning("could not check or crash flow run %s, whose heartbeats seem to have stopped: %s", run.id, err)
        return False
    state = getattr(result, "state", None)
    return state is not None and state.type == StateType.CRASHED


def heartbeat_env() -> dict[str, str]:
    """The environment a dispatched cell run gets so that it beats as often as the window assumes."""
    period = heartbeat_seconds()
    return {} if period is None else {HEARTBEAT_ENV: str(period)}


def ensure_zombie_detection(heartbeat: int | None = None, *, missed: int = MISSED_HEARTBEATS,
                            replace: bool = False) -> timedelta | None:
    """Create or update the server's automation :data:`AUTOMATION_NAME`; return its window (how long a silent
    run lives), None if there is none.

    Best effort: a server that refuses (permissions, an outage) gets a warning and no automation; each dispatcher
    then watches its own cells (:func:`silence_watch`).

    Args:
        heartbeat: the cell runs' heartbeat period in seconds (default: :func:`heartbeat_seconds`). None where
            Prefect's default is none: nothing is created.
        missed: heartbeat periods without an event before a run is marked Crashed.
        replace: set this window even if the automation's is longer (a test's fast hosts); otherwise the
            window only grows (see the module docstring).
    """
    heartbeat = heartbeat_seconds() if heartbeat is None else heartbeat
    if heartbeat is None:
        return None
    try:
        return _ensure(timedelta(seconds=missed * max(heartbeat, 30)), replace=replace)
    except Exception as err:  # the server's own errors vary (HTTP 403, connection refused, ...)
        _log.warning("could not set up the automation %r that crashes cell runs whose hosts died (%s): each "
                     "dispatcher watches its own cells' heartbeats instead", AUTOMATION_NAME, err)
        return None


def _ensure(within: timedelta, *, replace: bool) -> timedelta:
    from prefect import get_client
    from prefect.automations import Automation

    with get_client(sync_client=True) as client:
        found = client.read_automations_by_name(name=AUTOMATION_NAME)
        for duplicate in found[1:]:  # two dispatchers that started at once may each have created one
            client.delete_automation(duplicate.id)
    existing = found[0] if found else None
    current = getattr(existing.trigger, "within", None) if existing is not None else None
    if current is not None and current > within and not replace:
        within = current
    wanted = _automation(within)
    if existing is None:
        wanted.create()
    elif current != within or not existing.enabled:
        wanted.id = existing.id
        wanted.update()
    return within


def _automation(within: timedelta) -> "Automation":  # noqa: F821  (imported lazily: prefect's automations)
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    seconds = f"{within.total_seconds():.0f} s"
    return Automation(
        name=AUTOMATION_NAME,
        description=f"Marks a {CELL_FLOW_NAME} flow run Crashed when {seconds} pass without a heartbeat or state "
                    "change, so that its dispatch runs the cell again on another host.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.*"},
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            match_related=ResourceSpecification({"prefect.resource.role": "flow",
                                                 "prefect.resource.name": CELL_FLOW_NAME}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=within,
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=f"no heartbeat for {seconds}: its host is gone")],
    )
