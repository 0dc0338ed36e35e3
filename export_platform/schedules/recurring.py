"""Recurring exports, declared in recurring_exports.yaml, each built into a Dagster schedule.

A bad entry (unknown type, filter or column, bad cron or time zone) fails loading the code
location with the entry's name, so it never reaches production silently.
"""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dagster as dg
import yaml
from ..dagster_compat import is_valid_cron_string
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import ConfigurationError
from ..jobs import run_config_for
from ..catalog.export_types import REGISTRY
from ..naming import EXPORT_TYPE_TAG, FORMAT_TAG, INCREMENTAL_TAG, SCHEDULE_TAG
from ..planning.plan import ExportPlan, Incremental, RequestError, plan_request

RECURRING_EXPORTS = Path(__file__).with_name("recurring_exports.yaml")


class IncrementalSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    column: str


class RecurringExport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    export_type: str
    cron: str
    timezone: str = "UTC"
    format: str = "csv"
    params: dict = {}
    incremental: IncrementalSpec | None = None
    enabled: bool = True
    description: str = ""


class RecurringExportError(ConfigurationError, ValueError):
    """An entry of recurring_exports.yaml that cannot be scheduled; the code location refuses to load."""


def _plan(entry: RecurringExport) -> ExportPlan:
    # The key is the entry's name; the lower mark is read by each run's plan op.
    incremental = Incremental(entry.incremental.column, entry.name, None) if entry.incremental else None
    return plan_request(entry.export_type, entry.format, entry.params, incremental=incremental)


def build_recurring_schedule(entry: RecurringExport) -> dg.ScheduleDefinition:
    try:
        plan = _plan(entry)
        ZoneInfo(entry.timezone)
    except (RequestError, ZoneInfoNotFoundError, ValueError) as error:
        raise RecurringExportError(f"recurring export {entry.name!r}: {error}") from None
    if not is_valid_cron_string(entry.cron):
        raise RecurringExportError(f"recurring export {entry.name!r}: invalid cron {entry.cron!r}")
    return dg.ScheduleDefinition(
        name=f"recurring_{entry.name}",
        job_name=REGISTRY.get(entry.export_type).job_name,
        cron_schedule=entry.cron,
        execution_timezone=entry.timezone,
        run_config=run_config_for(plan),
        tags={
            SCHEDULE_TAG: entry.name,
            EXPORT_TYPE_TAG: entry.export_type,
            FORMAT_TAG: plan.format.value,
            **({INCREMENTAL_TAG: entry.name} if entry.incremental else {}),
        },
        description=entry.description or f"{entry.export_type} as {entry.format}, {entry.cron} ({entry.timezone})",
        default_status=dg.DefaultScheduleStatus.RUNNING if entry.enabled else dg.DefaultScheduleStatus.STOPPED,
    )


def load_recurring_exports(path: Path = RECURRING_EXPORTS) -> list[RecurringExport]:
    entries = yaml.safe_load(path.read_text()) or []
    try:
        parsed = [RecurringExport(**entry) for entry in entries]
    except (TypeError, ValidationError) as error:
        raise RecurringExportError(f"{path.name}: {error}") from None
    names = [e.name for e in parsed]
    if len(set(names)) != len(names):
        raise RecurringExportError(f"{path.name}: two recurring exports share a name")
    return parsed


def build_recurring_schedules(path: Path = RECURRING_EXPORTS) -> list[dg.ScheduleDefinition]:
    return [build_recurring_schedule(entry) for entry in load_recurring_exports(path)]
