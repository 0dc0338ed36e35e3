"""Dagster's private API that the project relies on (export_platform/dagster_compat.py).

Fast, no database. On a Dagster upgrade that moves or reshapes any of it, this fails here, by
name, before a run worker or the daemon does."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import yaml

from export_platform import dagster_compat as compat
from export_platform.tooling.instance import INSTANCE_YAML

PACKAGE = Path(compat.__file__).parent


def test_every_name_resolves():
    for name in compat.__all__:
        assert getattr(compat, name) is not None, name


def test_the_run_execution_body_keeps_its_signature_and_pid_log():
    body = compat.execute_run_body()
    assert list(inspect.signature(body).parameters) == ["run_id", "instance", "write_stream_fn", "set_exit_code_on_failure"]
    assert f'f"{compat.WORKER_STARTED_MESSAGE} (pid: {{pid}}).' in inspect.getsource(body)
    assert "capture_interrupts()" in inspect.getsource(importlib.import_module("dagster._cli.api"))


def test_the_sensor_daemon_loop_sleeps_the_patched_constant():
    sensor = compat.sensor_daemon()
    assert sensor.MIN_INTERVAL_LOOP_TIME == 5  # Dagster's value; export_platform.tooling.daemon lowers it
    assert "MIN_INTERVAL_LOOP_TIME - loop_duration" in inspect.getsource(sensor.execute_sensor_iteration_loop)
    assert callable(compat.daemon_main())


def test_health_check_types_have_the_fields_the_launchers_use():
    result = compat.CheckRunHealthResult(compat.WorkerStatus.FAILED, "gone", run_worker_id="1")
    assert (result.status, result.msg, result.run_worker_id) == (compat.WorkerStatus.FAILED, "gone", "1")
    assert {"RUNNING", "FAILED", "SUCCESS"} <= set(compat.WorkerStatus.__members__)


def test_the_log_text_read_back_is_what_dagster_writes():
    for qualified in (compat.STEP_ERROR_WRAPPER, compat.FAILURE_ERROR, compat.INTERRUPTED_ERROR):
        module, name = qualified.rsplit(".", 1)
        assert isinstance(getattr(importlib.import_module(module), name), type), qualified
    server = inspect.getsource(importlib.import_module("dagster._grpc.server"))
    assert f'prefix=f"{compat.WORKER_CRASH_MESSAGE} {{run.run_id}}"' in server
    monitoring = inspect.getsource(importlib.import_module("dagster._daemon.monitoring.run_monitoring"))
    assert f'message=f"{compat.MAX_RUNTIME_MESSAGE} of {{int(max_time)}} seconds."' in monitoring


def test_the_failure_causes_read_back_are_what_dagster_reports():
    from dagster._core.events import RunFailureReason
    from dagster._utils import get_run_crash_explanation

    assert get_run_crash_explanation("Run execution process for r", 0).endswith(compat.WORKER_EXITED_CLEANLY)
    assert RunFailureReason(compat.START_TIMEOUT_REASON) is RunFailureReason.START_TIMEOUT


def test_no_other_module_imports_dagster_private_api():
    private = re.compile(r"^\s*(from|import)\s+dagster\._", re.MULTILINE)
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "dagster_compat.py" and (private.search(path.read_text()) or '"dagster._' in path.read_text())
    ]
    assert offenders == []


def test_the_instance_yaml_names_importable_classes():
    config = yaml.safe_load(INSTANCE_YAML.read_text())
    for section in ("run_coordinator", "run_launcher"):
        module, name = config[section]["module"], config[section]["class"]
        assert isinstance(getattr(importlib.import_module(module), name), type), section


def test_dagster_postgres_storages_keep_their_engine_where_the_pooled_storage_replaces_it():
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    for storage in (PostgresRunStorage, PostgresEventLogStorage, PostgresScheduleStorage):
        assert "self._engine = create_pg_engine(" in inspect.getsource(storage.optimize_for_webserver), storage
        assert "self._engine" in inspect.getsource(storage.__init__), storage


def test_a_worker_keeps_its_sigterm_handler_through_dagsters_interrupt_handling():
    """Dagster re-points SIGTERM at its SIGINT handler whenever it swaps that handler (at every run);
    after `keep_sigterm` a worker's own SIGTERM handler (drain) survives a run's interrupt capture."""
    import signal

    interrupts = importlib.import_module("dagster._utils.interrupts")
    assert "setup_interrupt_handlers()" in inspect.getsource(interrupts._replace_interrupt_signal)
    original, setup = signal.getsignal(signal.SIGTERM), interrupts.setup_interrupt_handlers

    def drain(*_):
        pass

    try:
        signal.signal(signal.SIGTERM, drain)
        compat.keep_sigterm()
        with compat.capture_interrupts():
            assert signal.getsignal(signal.SIGTERM) is drain
        assert signal.getsignal(signal.SIGTERM) is drain
    finally:
        interrupts.setup_interrupt_handlers = setup
        signal.signal(signal.SIGTERM, original)


def test_the_dequeue_failures_read_back_are_what_the_queue_daemon_writes():
    daemon = inspect.getsource(importlib.import_module("dagster._daemon.run_coordinator.queued_run_coordinator_daemon"))
    for message in compat.DEQUEUE_FAILED_MESSAGES:
        assert message in daemon
    client = inspect.getsource(importlib.import_module("dagster._grpc.client"))
    assert "raise DagsterUserCodeUnreachableError(" in client
    assert "metadata" in inspect.signature(compat.EngineEventData).parameters


def test_a_failure_without_traceback_is_recorded_as_its_message_alone():
    import dagster as dg

    @dg.op
    def stops() -> None:
        raise compat.failure_without_traceback("stopped on request")

    @dg.job
    def stopping() -> None:
        stops()

    with dg.instance_for_test() as instance:
        result = stopping.execute_in_process(instance=instance, raise_on_error=False)
        [failure] = [e for e in result.all_events if e.is_step_failure]
        error = failure.step_failure_data.error
        assert (error.message, error.stack, error.cause, error.context) == ("stopped on request", [], None, None)
        [record] = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        assert "Stack Trace" not in record.user_message and "Traceback" not in record.user_message
