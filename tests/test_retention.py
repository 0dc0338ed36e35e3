"""The retention cleanup job and its schedule, on local and S3 storage and a real test instance."""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import urlparse

import boto3
import dagster as dg
import pytest

from export_platform.definitions import defs
from export_platform.ops.retention import cleanup_run_config, retention_cleanup
from export_platform.resources.storage import LocalStorage, S3Storage
from readback import run_job
from test_request_sensor import row
from test_storage import export_request


def run_cleanup(resources, storage, instance, dry_run=False, **overrides) -> dict:
    run_config = cleanup_run_config(dry_run)
    for op in run_config["ops"].values():
        op["config"] = {**op["config"], **overrides}
    result = retention_cleanup.execute_in_process(
        run_config=run_config, resources={**resources, "storage": storage}, instance=instance
    )
    return {
        e.step_key: {k: v.value for k, v in e.step_output_data.metadata.items()}
        for e in result.all_events
        if e.event_type_value == "STEP_OUTPUT"
    }


def exists(uri: str) -> bool:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.path).exists()
    listing = boto3.client("s3").list_objects_v2(Bucket=parsed.netloc, Prefix=parsed.path.lstrip("/"))
    return listing.get("KeyCount", 0) == 1


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_expired_files_are_deleted_and_their_rows_expired(db, resources, instance, kind, request, tmp_path):
    storage = (
        LocalStorage(root=str(tmp_path / "exports"))
        if kind == "local"
        else S3Storage(url=f"s3://exports/retention-{time.time_ns()}", staging_folder=str(tmp_path / "staging"))
    )
    if kind == "s3":
        request.getfixturevalue("s3_endpoint")
    db.execute("UPDATE export_requests SET expires_at = now() + interval '1 day' WHERE status = 'COMPLETED'")
    old, fresh = export_request(db, resources, storage), export_request(db, resources, storage)
    db.execute("UPDATE export_requests SET expires_at = now() - interval '1 hour' WHERE id = %s", (old["id"],))

    dry = run_cleanup(resources, storage, instance, dry_run=True)
    assert dry["expire_files"]["files"] == 1 and dry["expire_files"]["bytes_freed"] == old["file_bytes"]
    assert exists(old["file_uri"]) and row(db, old["id"])["status"] == "COMPLETED"

    done = run_cleanup(resources, storage, instance)
    assert done["expire_files"] == {"files": 1, "bytes_freed": old["file_bytes"], "dry_run": False}
    assert not exists(old["file_uri"]) and exists(fresh["file_uri"])
    expired = row(db, old["id"])
    assert (expired["status"], expired["expired_reason"], expired["download_url"]) == ("EXPIRED", "retention", None)
    assert row(db, fresh["id"])["status"] == "COMPLETED"


def test_orphaned_temp_folders_of_crashed_runs_are_removed(resources, instance, tmp_path):
    storage = LocalStorage(root=str(tmp_path / "exports"))
    crashed = storage.run_temp_folder("11111111-dead-run")
    (crashed / "export.xlsx").write_bytes(b"x" * 1000)
    (crashed / "tmpab12cd").write_bytes(b"s" * 24)  # a writer's spool file
    for path in (*crashed.iterdir(), crashed):
        os.utime(path, (time.time() - 2 * 86400,) * 2)
    current = storage.run_temp_folder("22222222-live-run")
    (current / "export.csv").write_bytes(b"y")
    dry = run_cleanup(resources, storage, instance, dry_run=True)
    assert dry["remove_orphaned_temp_files"]["files"] == 1 and crashed.exists()
    done = run_cleanup(resources, storage, instance)
    assert done["remove_orphaned_temp_files"]["bytes_freed"] == 1024
    assert not crashed.exists() and current.exists()


def test_old_export_run_history_is_pruned(resources, instance):
    for _ in range(2):
        assert run_job("ledger_postings", {"format": "csv", "columns": ["id"]}, resources, instance=instance).success
    count = lambda: instance.get_runs_count(dg.RunsFilter(job_name="export_ledger_postings"))  # noqa: E731
    assert count() == 2
    assert run_cleanup(resources, resources["storage"], instance, run_history_days=1)["prune_run_history"]["runs"] == 0
    assert run_cleanup(resources, resources["storage"], instance, dry_run=True, run_history_days=0)["prune_run_history"]["runs"] == 2
    assert count() == 2
    assert run_cleanup(resources, resources["storage"], instance, run_history_days=0)["prune_run_history"]["runs"] == 2
    assert count() == 0


def test_retention_schedule_runs_daily_with_the_cleanup_config():
    schedule = defs.get_schedule_def("retention_cleanup_daily")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 3 * * *", "UTC")
    assert schedule.job_name == "retention_cleanup"
    with dg.build_schedule_context() as context:
        [run_request] = schedule.evaluate_tick(context).run_requests
    assert dg.validate_run_config(defs.resolve_job_def("retention_cleanup"), run_request.run_config)
