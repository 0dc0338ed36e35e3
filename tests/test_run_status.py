"""Why a run failed, as the request row says it: from the run's own events in a real test instance."""

from __future__ import annotations

import pytest
from dagster._core.events import DagsterEvent, DagsterEventType, JobFailureData, RunFailureReason
from dagster._core.execution.plan.objects import StepFailureData
from dagster._utils.error import SerializableErrorInfo

from export_platform.jobs import EXPORT_JOBS
from export_platform.run_failures import LOST_DATABASE, NEVER_STARTED, failure_message


@pytest.fixture
def run(instance):
    return instance.create_run_for_job(EXPORT_JOBS[0], run_config={})


def test_a_run_that_never_started_says_the_platform_restarted(instance, run):
    message = "Run timed out due to taking longer than 180 seconds to start."
    instance.report_run_failed(run, message, JobFailureData(error=None, failure_reason=RunFailureReason.START_TIMEOUT))
    assert failure_message(instance, run.run_id) == NEVER_STARTED


def test_a_worker_that_exited_without_its_result_names_the_lost_database(instance, run):
    crash = f"Run execution process for {run.run_id} unexpectedly exited with code 0."
    instance.report_engine_event(f"[DagsterApiServer] {crash}", run)
    instance.report_run_failed(run, "This run has been marked as failed from outside the execution context.")
    message = failure_message(instance, run.run_id)
    assert message.startswith(LOST_DATABASE) and crash in message


def test_a_killed_worker_keeps_its_signal(instance, run):
    crash = f"Run execution process for {run.run_id} was terminated by signal 9 (SIGKILL)."
    instance.report_engine_event(f"[DagsterApiServer] {crash}", run)
    instance.report_run_failed(run, "This run has been marked as failed from outside the execution context.")
    assert failure_message(instance, run.run_id) == crash


def _step_failed(instance, run, message: str) -> None:
    error = SerializableErrorInfo(message, stack=[], cls_name="OperationalError")
    event = DagsterEvent(
        event_type_value=DagsterEventType.STEP_FAILURE.value,
        job_name=run.job_name,
        step_key="extract_export",
        event_specific_data=StepFailureData(error=error, user_failure_data=None),
    )
    instance.report_dagster_event(event, run.run_id)


def test_a_step_failing_once_its_run_is_stopped_does_not_hide_why_it_was_stopped(instance, run):
    """At the maximum runtime the canceling sensor may cancel the query before the run's interrupt
    reaches the step, which then fails with the server's cancel, not with the interrupt."""
    reason = "Canceling due to exceeding maximum runtime of 1 seconds."
    instance.report_run_canceling(run, message=reason)
    _step_failed(instance, run, "canceling statement due to user request")
    instance.report_run_failed(run, "Exceeded maximum runtime of 1 seconds.")
    assert failure_message(instance, run.run_id) == reason


def test_a_step_that_failed_before_its_run_was_stopped_is_the_cause(instance, run):
    _step_failed(instance, run, "disk full")
    instance.report_run_canceling(run, message="Canceling due to exceeding maximum runtime of 1 seconds.")
    instance.report_run_failed(run, "Exceeded maximum runtime of 1 seconds.")
    assert failure_message(instance, run.run_id) == "disk full"


def test_what_the_pool_saw_happen_to_its_worker_is_the_cause(instance, run):
    from export_platform.run_failures import POOL_EVENT, drained

    instance.report_engine_event(f"{POOL_EVENT}{drained(30)}", run)
    # The drain's interrupt makes a step fail afterwards with whatever the interrupt broke.
    _step_failed(instance, run, "server closed the connection unexpectedly")
    instance.report_run_failed(run)
    assert failure_message(instance, run.run_id) == drained(30)


def test_a_run_the_queue_could_not_launch_names_the_code_server(instance, run):
    from export_platform.dagster_compat import DEQUEUE_FAILED_MESSAGES, EngineEventData
    from export_platform.run_failures import NOT_LAUNCHED

    reason = "User code server request timed out due to taking longer than 60 seconds to complete."
    error = SerializableErrorInfo(f"dagster._core.errors.DagsterUserCodeUnreachableError: {reason}\n", stack=[], cls_name="X")
    instance.report_engine_event(f"{DEQUEUE_FAILED_MESSAGES[1]} 3 attempts, failing run", run, EngineEventData.engine_error(error))
    instance.report_run_failed(run)
    assert failure_message(instance, run.run_id) == NOT_LAUNCHED.format(reason)


def test_a_run_a_daemon_failed_without_a_reason_says_what_its_events_show(instance, run):
    """`report_run_failed` with no message (a daemon giving up on a run, e.g. while Postgres
    restarts under it) must not reach the row as Dagster's "marked as failed from outside the
    execution context": seen in the soak of tests/test_worker_drain.py."""
    from export_platform.run_failures import FAILED_BEFORE_START, FAILED_FROM_OUTSIDE

    instance.report_run_failed(run)
    assert failure_message(instance, run.run_id) == FAILED_BEFORE_START
    started = instance.create_run_for_job(EXPORT_JOBS[0], run_config={})
    instance.report_dagster_event(DagsterEvent(event_type_value=DagsterEventType.RUN_START.value, job_name=started.job_name), started.run_id)
    instance.report_run_failed(started)
    assert failure_message(instance, started.run_id) == FAILED_FROM_OUTSIDE
    assert "outside the execution context" not in FAILED_BEFORE_START + FAILED_FROM_OUTSIDE
