"""The front door: rows in `export_requests` become runs, and cancel requests stop them.

The row's status is the source of truth; its `run_key` (random, stored on the row at insert) is
only the guard against a second run. Each tick reads a bounded number of rows with a statement
timeout, so it stays far inside Dagster's ~60 s tick limit. Each row is decoded, checked and
claimed on its own, in a savepoint: whatever one row contains, it ends FAILED with a message
naming the field (or `params`) and the other rows of the tick are served as if it were not there.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import dagster as dg

from ..requests import table as rt
from ..jobs import run_config_for
from ..catalog.export_types import REGISTRY
from ..planning.plan import ExportPlan, RequestError, plan_request
from ..planning.values import decode_params
from ..requests.status import Status
from ..resources.postgres import PostgresResource
from ..naming import (
    EXPORT_TYPE_TAG,
    FORMAT_TAG,
    INTERRUPTED_TAG,
    REQUEST_ID_TAG,
    REQUEST_KEY_TAG,
    REQUEST_SENSOR,
    REQUESTED_BY_TAG,
    session_name,
    user_tag,
)
from ..requests.store import RequestStore
from ..run_failures import failure_message

ROWS_PER_TICK = 50
# An active row this long without an update gets its run's status checked.
QUIET_SECONDS = 30
# A QUEUED row whose run never appeared (the tick's result was lost) is offered again after this.
REQUEUE_AFTER = timedelta(minutes=2)
# ...at most this many times in all; then the row fails instead of waiting forever.
MAX_OFFERS = 3
# A run still NOT_STARTED this long after it was created was never submitted to the queue.
NEVER_LAUNCHED_AFTER = timedelta(minutes=1)
_NOT_STARTED = (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED)
_IN_FLIGHT = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)
# A cancelled run whose steps have not stopped this long after its query was cancelled gets the
# interrupt (a step busy outside the database: a writer, a slow upload).
INTERRUPT_AFTER_SECONDS = 10


def run_request_for(request_id: int, run_key: str, plan: ExportPlan, requested_by: str | None) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=run_key,
        job_name=REGISTRY.get(plan.export_type).job_name,
        run_config=run_config_for(plan),
        tags={
            REQUEST_ID_TAG: str(request_id),
            REQUEST_KEY_TAG: run_key,
            EXPORT_TYPE_TAG: plan.export_type,
            FORMAT_TAG: plan.format.value,
            REQUESTED_BY_TAG: user_tag(requested_by),
        },
    )


def _run_for(instance: dg.DagsterInstance, row) -> dg.DagsterRun | None:
    if row.run_id:
        return instance.get_run_by_id(row.run_id)
    runs = instance.get_runs(dg.RunsFilter(tags={REQUEST_KEY_TAG: row.run_key}), limit=1)
    return runs[0] if runs else None


def _cancel(context, requests: RequestStore, postgres: PostgresResource, request_id: int, run) -> None:
    if run is None or run.status in _NOT_STARTED:
        if run is not None:
            context.instance.run_coordinator.cancel_run(run.run_id)
        requests.run(rt.mark_cancelled(request_id))
    elif run.status in _IN_FLIGHT:
        if run.status is dg.DagsterRunStatus.STARTED:
            # Stopping its query stops a streaming step promptly, at a point the step handles: it
            # sees the run CANCELING and ends with "stopped … (cancelled)". An interrupt sent at the
            # same moment can land between steps, and Dagster ends the run with its traceback.
            context.instance.report_run_canceling(run, message="Canceling on its request's cancel.")
        elif INTERRUPTED_TAG not in run.tags and (
            run.status is dg.DagsterRunStatus.STARTING or _canceling_for(context.instance, run) > INTERRUPT_AFTER_SECONDS
        ):
            context.instance.add_run_tags(run.run_id, {INTERRUPTED_TAG: "1"})
            context.instance.run_launcher.terminate(run.run_id)
        # Every tick: a step may have begun its query after the last cancel.
        postgres.cancel_queries(session_name(run.run_id))
    else:
        # CANCELED, or FAILURE caused by the cancelled query. (Not SUCCESS: a successful run's publish
        # completed the row under a lock, and the database ignores a cancel of a completed row.)
        requests.run(rt.mark_cancelled(request_id))


def _canceling_for(instance: dg.DagsterInstance, run: dg.DagsterRun) -> float:
    records = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_CANCELING)
    return time.time() - records[0].timestamp if records else 0.0


def _reconcile(context, requests: RequestStore, request_id: int, run: dg.DagsterRun) -> None:
    """A run that ended without its outcome reaching the row (e.g. it failed to launch before the
    failure sensor was watching, or while the code server was down): the run's status decides."""
    if run.status is dg.DagsterRunStatus.FAILURE:
        requests.run(rt.mark_failed(request_id, failure_message(context.instance, run.run_id)))
    elif run.status is dg.DagsterRunStatus.NOT_STARTED and _age(context.instance, run) > NEVER_LAUNCHED_AFTER:
        # Created, but its launch failed (a run is NOT_STARTED for a moment before it is submitted).
        requests.run(rt.mark_failed(request_id, f"run {run.run_id} was created but never launched"))
    elif run.status is dg.DagsterRunStatus.CANCELED:
        requests.run(rt.mark_cancelled(request_id))


def _age(instance: dg.DagsterInstance, run: dg.DagsterRun) -> timedelta:
    record = instance.get_run_record_by_id(run.run_id)
    return datetime.now(timezone.utc) - record.create_timestamp if record else timedelta(0)


def _attend_row(context, requests: RequestStore, postgres: PostgresResource, row, now: datetime) -> None:
    run = _run_for(context.instance, row)
    if Status(row.status).meaning.stopping:
        _cancel(context, requests, postgres, row.id, run)
    elif run is not None:
        if row.run_id is None:
            requests.run(rt.set_run_id(row.id, run.run_id))
        _reconcile(context, requests, row.id, run)
    elif row.queued_at is not None and now - row.queued_at > REQUEUE_AFTER:
        if row.offers >= MAX_OFFERS:
            error = f"no Dagster run appeared for this request after {row.offers} offers (run key {row.run_key})"
            requests.run(rt.mark_failed(row.id, error))
        else:
            context.log.warning(f"request {row.id}: no run appeared; offering it again")
            requests.run(rt.requeue(row.id))


def _attend(context, requests: RequestStore, postgres: PostgresResource) -> None:
    """Cancels, QUEUED rows not yet tied to their run, and active rows whose run has ended."""
    now = datetime.now(timezone.utc)
    for row in requests.run(rt.needing_attention(ROWS_PER_TICK, QUIET_SECONDS)).all():
        try:
            _attend_row(context, requests, postgres, row, now)
        except Exception:  # one row's trouble (e.g. a run record that cannot be read) must not stop the rest
            context.log.exception(f"request {row.id}: could not check its run; trying again next tick")


def _claim(conn, row) -> dg.RunRequest:
    plan = plan_request(row.export_type, row.format, decode_params(row.params))
    run_request = run_request_for(row.id, row.run_key, plan, row.requested_by)
    conn.execute(rt.mark_queued(row.id))
    return run_request


def _reject(context, conn, request_id: int, error: str) -> None:
    # The row carries the error for whoever asked: refusing bad input is the sensor's normal work,
    # not an event for the daemon's log (an application sending bad rows would flood it).
    context.log.debug(f"request {request_id} rejected: {error}")
    try:
        with conn.begin_nested():
            conn.execute(rt.mark_failed(request_id, error))
    except Exception:  # quarantine with a message the row can surely hold
        with conn.begin_nested():
            conn.execute(rt.mark_failed(request_id, "params: this request could not be read"))


def _claim_pending(context, requests: RequestStore) -> list[dg.RunRequest]:
    run_requests = []
    with requests.transaction() as conn:
        for row in conn.execute(rt.pending(ROWS_PER_TICK)).all():
            try:
                with conn.begin_nested():
                    run_requests.append(_claim(conn, row))
            except RequestError as error:
                _reject(context, conn, row.id, str(error))
            except Exception as error:  # whatever else one row holds, it fails alone
                context.log.warning(f"request {row.id}: unexpected {type(error).__name__} while checking it; failed alone")
                _reject(context, conn, row.id, f"params: could not be processed ({type(error).__name__}: {error})")
    return run_requests


def build_request_sensor(jobs: list[dg.JobDefinition]) -> dg.SensorDefinition:
    @dg.sensor(
        name=REQUEST_SENSOR,
        jobs=jobs,
        # With the daemon's sensor loop at 0.5 s (export_platform/tooling/daemon.py), a new row is QUEUED
        # within about a second; each tick reads a bounded batch.
        minimum_interval_seconds=1,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Launches a run for each PENDING row of export_requests and stops the runs of cancelled ones.",
    )
    def export_request_sensor(
        context: dg.SensorEvaluationContext, requests: RequestStore, postgres: PostgresResource
    ) -> dg.SensorResult:
        _attend(context, requests, postgres)
        return dg.SensorResult(run_requests=_claim_pending(context, requests))

    return export_request_sensor
