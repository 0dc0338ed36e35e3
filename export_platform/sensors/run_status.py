"""Run outcomes written back to the request row, whatever ended the run.

A run can fail before its first op, be terminated from the UI, or have its worker killed; the
ops cannot report any of that themselves, so these sensors do. A run can also fail after its file
was delivered (its worker lost between publishing and Dagster recording the step): the row then
stays COMPLETED and the run says that the file was delivered.
"""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg
import sqlalchemy as sa

from ..dagster_compat import EngineEventData
from ..requests import table as rt
from ..requests.status import Status
from ..naming import request_id_of, session_name
from ..resources.postgres import PostgresResource
from ..requests.store import RequestStore
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
    """End the run's sessions and remove its temp file, then mark its request (if any) with `mark`."""
    # A killed worker's query runs on until the server next writes to the dead socket; a frozen
    # one's blocks writing to a client that does not read, where a cancel never reaches it; and a
    # worker lost while recording its result holds the row's lock until this ends its transaction
    # (ops/lease.py). So no snapshot or connection outlives its run: terminate, then mark.
    postgres.end_sessions(session_name(run.run_id))
    storage.discard_temp(run.run_id)
    request_id = request_id_of(run.tags)
    if request_id is not None:
        requests.run(mark(request_id))


def _say_if_delivered(instance: dg.DagsterInstance, run: dg.DagsterRun, request) -> None:
    """A failed run whose request is COMPLETED published its file before it was lost: say so on
    the run, so that nobody re-executes it."""
    if request is None or not Status(request["status"]).meaning.delivered or request["run_id"] != run.run_id:
        return
    instance.report_engine_event(
        f"The export was delivered before the run failed: request {request['id']} is {request['status']} with "
        f"{request['file_uri']} ({request['row_count']:,} rows). Only Dagster's record of the last step was lost "
        "with the run's worker; do not re-execute this run.",
        run,
        EngineEventData(metadata={
            "request_id": request["id"], "file": dg.MetadataValue.path(request["file_uri"]),
            "rows": request["row_count"], "sha256": request["sha256"],
        }),
    )


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
        if (request_id := request_id_of(context.dagster_run.tags)) is not None:
            _say_if_delivered(context.instance, context.dagster_run, requests.run(rt.by_id(request_id)).mappings().first())

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
