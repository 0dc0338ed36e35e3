"""`export-platform health`: is every part needed to serve requests alive?"""

from __future__ import annotations

import time

import dagster as dg
from ..dagster_compat import InstigatorStatus, InstigatorType, TickStatus

from ..naming import REQUEST_SENSOR
from ..requests import table as rt
from .instance import use_deployed_instance
from ..resources.database_url import require_database_url
from ..requests.store import RequestStore

HEARTBEAT_TOLERANCE_SECONDS = 60  # daemons beat every 30 s
TICK_TOLERANCE_SECONDS = 60
REQUIRED_DAEMONS = ("SENSOR", "QUEUED_RUN_COORDINATOR", "MONITORING")


def _database(lines: list[str]) -> list[str]:
    try:
        depth = RequestStore(url=require_database_url()).run(rt.queue_depth()).scalar()
    except rt.SchemaMismatch as error:  # reached, but not ready for requests
        return [f"database: {error}"]
    except Exception as error:  # any failure to reach it is the finding
        return [f"database unreachable: {error}"]
    lines.append(f"ok    database reachable; {depth} request(s) pending or queued")
    return []


def _daemons(instance: dg.DagsterInstance, lines: list[str]) -> list[str]:
    beats, problems = instance.get_daemon_heartbeats(), []
    for daemon in REQUIRED_DAEMONS:
        beat = beats.get(daemon)
        age = time.time() - beat.timestamp if beat else None
        if age is None or age > HEARTBEAT_TOLERANCE_SECONDS:
            problems.append(f"daemon {daemon}: no heartbeat" + (f" for {age:.0f} s" if age else ""))
        else:
            lines.append(f"ok    daemon {daemon}: heartbeat {age:.0f} s ago")
    return problems


def _request_sensor(instance: dg.DagsterInstance, lines: list[str]) -> list[str]:
    states = [
        s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
        if s.instigator_name == REQUEST_SENSOR
    ]
    if not states or states[0].status is InstigatorStatus.STOPPED:
        return [f"{REQUEST_SENSOR} is not running (turn it on in the UI)"]
    ticks = instance.get_ticks(states[0].instigator_origin_id, states[0].selector_id, limit=1)
    if not ticks:
        return [f"{REQUEST_SENSOR} has never ticked"]
    age = time.time() - ticks[0].timestamp
    if age > TICK_TOLERANCE_SECONDS:
        return [f"{REQUEST_SENSOR} last ticked {age:.0f} s ago"]
    if ticks[0].status is TickStatus.FAILURE:
        return [f"{REQUEST_SENSOR} last tick failed: {ticks[0].error.message.strip() if ticks[0].error else ''}"]
    lines.append(f"ok    {REQUEST_SENSOR}: last tick {age:.0f} s ago ({ticks[0].status.value})")
    return []


def check() -> tuple[list[str], list[str]]:
    """(problems, report lines); the report lists the problems too."""
    require_database_url()
    use_deployed_instance()
    lines: list[str] = []
    problems = _database(lines)
    with dg.DagsterInstance.get() as instance:
        problems += _daemons(instance, lines) + _request_sensor(instance, lines)
        queued = instance.get_runs_count(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]))
        lines.append(f"info  {queued} run(s) waiting in Dagster's queue")
    return problems, lines + [f"FAIL  {p}" for p in problems]
