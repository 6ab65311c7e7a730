"""A dead host's cell is noticed without a timeout: a server automation marks a cell flow run ``Crashed`` once
its heartbeats stop, and the dispatch retries crashed cells (:mod:`flows.dispatch`).

Prefect 3.9 flow runs send a heartbeat event every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (180 by default,
30 at least). A self-hosted server acts on them only through an automation (Prefect's "detect zombie flows"
recipe): after each heartbeat of a cell flow run, expect another event of that run (a heartbeat or a state
change) within :data:`MISSED_HEARTBEATS` heartbeat periods, else set the run ``Crashed``. Only runs of the cell
flow are watched; a user's other flows on the same server are not touched.
"""

from __future__ import annotations

from datetime import timedelta

from flows.cell_flow import CELL_FLOW_NAME

AUTOMATION_NAME = f"{CELL_FLOW_NAME}: crash runs whose heartbeats stopped"
MISSED_HEARTBEATS = 3  # periods without a heartbeat before a run counts as dead (Prefect's own rule of thumb)


def heartbeat_seconds() -> int | None:
    """The heartbeat period of flow runs that workers started with this host's environment: its
    ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, else Prefect's default (180 s). Not this process's own setting: a
    console run turns its own heartbeats off (see ``flows.train_flow.without_flow_heartbeats``)."""
    import os

    from prefect.settings.models.flows import FlowsSettings

    value = os.environ.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY")
    return int(value) if value else FlowsSettings.model_fields["heartbeat_frequency"].default


def ensure_zombie_detection(heartbeat: int | None = None, *, missed: int = MISSED_HEARTBEATS) -> timedelta | None:
    """Create or update the server's automation :data:`AUTOMATION_NAME`; return how long a silent run lives.

    Args:
        heartbeat: the cell runs' heartbeat period in seconds, as their workers send them (default:
            :func:`heartbeat_seconds`). None where Prefect's default is none: nothing is created.
        missed: heartbeat periods without an event before a run is marked Crashed.
    """
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    heartbeat = heartbeat_seconds() if heartbeat is None else heartbeat
    if heartbeat is None:
        return None
    within = timedelta(seconds=missed * max(heartbeat, 30))
    wanted = Automation(
        name=AUTOMATION_NAME,
        description=f"Marks a {CELL_FLOW_NAME} flow run Crashed when {within.total_seconds():.0f} s pass without "
                    "a heartbeat or state change, so that its dispatch runs the cell again on another host.",
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
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {within.total_seconds():.0f} s: its host is gone")],
    )
    try:
        existing = Automation.read(name=AUTOMATION_NAME)
    except ValueError:  # none by that name
        existing = None
    if existing is None:
        wanted.create()
    elif getattr(existing.trigger, "within", None) != within or not existing.enabled:
        wanted.id = existing.id
        wanted.update()
    return within
