"""Why a run failed, as the request row says it: from the run's own events in a real test instance."""

from __future__ import annotations

import pytest
from dagster._core.events import JobFailureData, RunFailureReason

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
