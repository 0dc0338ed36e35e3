"""Run outcomes written back to the request row, whatever ended the run.

A run can fail before its first op, be terminated from the UI, or have its worker killed; the
ops cannot report any of that themselves, so these sensors do.
"""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg
import sqlalchemy as sa

from ..requests import table as rt
from ..naming import request_id_of, session_name
from ..resources.postgres import PostgresResource
from ..resources.requests import RequestStore
from ..resources.storage import ExportStorage
from ..run_failures import failure_message

INTERVAL_SECONDS = 2


def _end_request(
    run: dg.DagsterRun,
    requests: RequestStore,
    postgres: PostgresResource,
    storage: ExportStorage,
    mark: Callable[[int], sa.Update],
) -> None:
    """Stop the run's query and remove its temp file, then mark its request (if any) with `mark`."""
    # A killed worker's query runs on until the server next writes to the dead socket.
    postgres.cancel_queries(session_name(run.run_id))
    storage.discard_temp(run.run_id)
    request_id = request_id_of(run.tags)
    if request_id is not None:
        requests.run(mark(request_id))


def build_run_status_sensors(jobs: list[dg.JobDefinition]) -> list[dg.SensorDefinition]:
    common = {
        "monitored_jobs": jobs,
        "minimum_interval_seconds": INTERVAL_SECONDS,
        "default_status": dg.DefaultSensorStatus.RUNNING,
    }

    @dg.run_failure_sensor(
        name="export_failure_sensor",
        **common,
        description="Marks the request FAILED with the run's error, stops its query and removes its temp file.",
    )
    def export_failure_sensor(
        context: dg.RunFailureSensorContext, requests: RequestStore, postgres: PostgresResource, storage: ExportStorage
    ) -> None:
        def failed(request_id: int) -> sa.Update:
            return rt.mark_failed(request_id, failure_message(context.instance, context.dagster_run.run_id))

        _end_request(context.dagster_run, requests, postgres, storage, failed)

    @dg.run_status_sensor(
        name="export_canceling_sensor",
        run_status=dg.DagsterRunStatus.CANCELING,
        **common,
        description="Stops the Postgres query of a run being terminated, so no scan outlives it.",
    )
    def export_canceling_sensor(context: dg.RunStatusSensorContext, postgres: PostgresResource) -> None:
        postgres.cancel_queries(session_name(context.dagster_run.run_id))

    @dg.run_status_sensor(
        name="export_canceled_sensor",
        run_status=dg.DagsterRunStatus.CANCELED,
        **common,
        description="Marks the request CANCELLED, stops its query and removes its temp file.",
    )
    def export_canceled_sensor(
        context: dg.RunStatusSensorContext, requests: RequestStore, postgres: PostgresResource, storage: ExportStorage
    ) -> None:
        _end_request(context.dagster_run, requests, postgres, storage, rt.mark_cancelled)

    return [export_failure_sensor, export_canceling_sensor, export_canceled_sensor]
