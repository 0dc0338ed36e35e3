"""Run outcomes written back to the request row, whatever ended the run.

A run can fail before its first op, be terminated from the UI, or have its worker killed; the
ops cannot report any of that themselves, so these sensors do.
"""

from __future__ import annotations

import dagster as dg

from ..requests import table as rt
from ..naming import request_id_of, session_name
from ..resources.postgres import PostgresResource
from ..resources.requests import RequestStore
from ..resources.storage import ExportStorage
from ..run_failures import failure_message

INTERVAL_SECONDS = 2


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
        run_id = context.dagster_run.run_id
        # A killed worker's query runs on until the server next writes to the dead socket.
        postgres.cancel_queries(session_name(run_id))
        storage.discard_temp(run_id)
        request_id = request_id_of(context.dagster_run.tags)
        if request_id is not None:
            requests.run(rt.mark_failed(request_id, failure_message(context.instance, run_id)))

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
        run_id = context.dagster_run.run_id
        postgres.cancel_queries(session_name(run_id))
        storage.discard_temp(run_id)
        request_id = request_id_of(context.dagster_run.tags)
        if request_id is not None:
            requests.run(rt.mark_cancelled(request_id))

    return [export_failure_sensor, export_canceling_sensor, export_canceled_sensor]
