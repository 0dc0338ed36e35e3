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
from export_platform.catalog.export_types import REGISTRY
from export_platform.jobs import build_chunked_job
from export_platform.ops import retention
from export_platform.ops.plan import plan_op_name
from export_platform.ops.retention import cleanup_run_config, retention_cleanup
from export_platform.resources.storage import LocalStorage, S3Storage, StorageError
from support.readback import run_job
from support.request_rows import export_request, row


def run_cleanup(resources, storage, instance, dry_run=False, **overrides) -> dict:
    run_config = cleanup_run_config(dry_run)
    for op in run_config["ops"].values():
        op["config"] = {**op["config"], **overrides}
    result = retention_cleanup.execute_in_process(
        run_config=run_config, resources={**resources, "storage": storage}, instance=instance, raise_on_error=False
    )
    found = {}
    for event in result.all_events:
        if event.event_type_value == "STEP_OUTPUT":
            found[event.step_key] = {k: v.value for k, v in event.step_output_data.metadata.items()}
        elif event.is_step_failure:  # what a step that failed on some files found, with its message
            failure = event.step_failure_data
            metadata = failure.user_failure_data.metadata if failure.user_failure_data else {}
            found[event.step_key] = {**{k: v.value for k, v in metadata.items()}, "error": failure.error.message}
    return found


def exists(uri: str) -> bool:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.path).exists()
    listing = boto3.client("s3").list_objects_v2(Bucket=parsed.netloc, Prefix=parsed.path.lstrip("/"))
    return listing.get("KeyCount", 0) == 1


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
    assert done["expire_files"] == {"files": 1, "bytes_freed": old["file_bytes"], "failed": 0, "dry_run": False}
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


def test_old_export_run_history_is_pruned_for_plain_and_chunked_jobs(resources, instance):
    for _ in range(2):
        assert run_job("ledger_postings", {"format": "csv", "columns": ["id"]}, resources, instance=instance).success
    chunked = build_chunked_job(REGISTRY.get("ledger_postings"), executor_def=dg.in_process_executor)
    config = {"format": "csv", "columns": ["id"], "chunks": 2}
    assert chunked.execute_in_process(
        run_config={"ops": {plan_op_name("ledger_postings"): {"config": config}}}, resources=resources, instance=instance
    ).success
    names = (REGISTRY.get("ledger_postings").job_name, REGISTRY.get("ledger_postings").chunked_job_name)
    count = lambda: [instance.get_runs_count(dg.RunsFilter(job_name=name)) for name in names]  # noqa: E731
    assert count() == [2, 1]
    assert run_cleanup(resources, resources["storage"], instance, run_history_days=1)["prune_run_history"]["runs"] == 0
    assert run_cleanup(resources, resources["storage"], instance, dry_run=True, run_history_days=0)["prune_run_history"]["runs"] == 3
    assert count() == [2, 1]
    assert run_cleanup(resources, resources["storage"], instance, run_history_days=0)["prune_run_history"]["runs"] == 3
    assert count() == [0, 0]


def test_retention_schedule_runs_daily_with_the_cleanup_config():
    schedule = defs.get_schedule_def("retention_cleanup_daily")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 3 * * *", "UTC")
    assert schedule.job_name == "retention_cleanup"
    with dg.build_schedule_context() as context:
        [run_request] = schedule.evaluate_tick(context).run_requests
    assert dg.validate_run_config(defs.resolve_job_def("retention_cleanup"), run_request.run_config)


def expire_now(db, *requests) -> None:
    """Only these requests are past their expiry, oldest first."""
    db.execute("UPDATE export_requests SET expires_at = now() + interval '1 day' WHERE status = 'COMPLETED'")
    for age, request in enumerate(reversed(requests), start=1):
        db.execute("UPDATE export_requests SET expires_at = now() - %s * interval '1 hour' WHERE id = %s", (age, request["id"]))


def test_wrong_s3_credentials_fail_the_row_and_leave_the_object(db, resources, instance, s3_endpoint, tmp_path, monkeypatch):
    from moto.core.authorization import enable_iam_authentication

    url, staging = f"s3://exports/credentials-{time.time_ns()}", str(tmp_path / "staging")
    done = export_request(db, resources, S3Storage(url=url, staging_folder=staging))
    expire_now(db, done)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    wrong = S3Storage(url=url, staging_folder=staging)
    with enable_iam_authentication():  # the moto server now checks credentials, as S3 does
        with pytest.raises(StorageError, match=r"\(403\)"):
            wrong.delete_request_file(done["file_key"], done["file_uri"])
        cleanup = run_cleanup(resources, wrong, instance)["expire_files"]
    assert (cleanup["files"], cleanup["failed"]) == (0, 1) and "could not be deleted" in cleanup["error"]
    monkeypatch.undo()
    assert exists(done["file_uri"]) and row(db, done["id"])["status"] == "COMPLETED"
    # Once the object is really gone (404), deleting is done and the next cleanup expires the row.
    boto3.client("s3").delete_object(Bucket="exports", Key=urlparse(done["file_uri"]).path.lstrip("/"))
    assert S3Storage(url=url, staging_folder=staging).delete(done["file_key"]) == 0
    assert run_cleanup(resources, S3Storage(url=url, staging_folder=staging), instance)["expire_files"]["files"] == 1
    assert row(db, done["id"])["status"] == "EXPIRED"


def test_a_row_outside_the_storage_does_not_stop_the_others(db, resources, instance, tmp_path, monkeypatch):
    monkeypatch.setattr(retention, "BATCH", 2)  # the failing rows fill whole pages
    storage = LocalStorage(root=str(tmp_path / "exports"))
    moved = [export_request(db, resources, LocalStorage(root=str(tmp_path / "old"))) for _ in range(3)]
    kept = export_request(db, resources, storage)
    expire_now(db, *moved, kept)
    cleanup = run_cleanup(resources, storage, instance)["expire_files"]
    assert (cleanup["files"], cleanup["failed"]) == (1, 3)
    assert "is not in the storage folder" in cleanup["error"]
    assert row(db, kept["id"])["status"] == "EXPIRED" and not exists(kept["file_uri"])
    assert all(row(db, r["id"])["status"] == "COMPLETED" and exists(r["file_uri"]) for r in moved)


def test_a_dry_run_reports_every_page_the_real_run_would_expire(db, resources, instance, tmp_path, monkeypatch):
    monkeypatch.setattr(retention, "BATCH", 2)
    storage = LocalStorage(root=str(tmp_path / "exports"))
    requests = [export_request(db, resources, storage) for _ in range(5)]
    expire_now(db, *requests)
    dry = run_cleanup(resources, storage, instance, dry_run=True)["expire_files"]
    assert (dry["files"], dry["bytes_freed"]) == (5, sum(r["file_bytes"] for r in requests))
    assert run_cleanup(resources, storage, instance)["expire_files"]["files"] == 5


def write_file(root: Path, key: str, days_old: float) -> Path:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * 10)
    os.utime(path, (time.time() - days_old * 86400,) * 2)
    return path


def test_files_of_schedules_and_launchpad_runs_expire_by_age(resources, instance, tmp_path):
    root = tmp_path / "exports"
    storage = LocalStorage(root=str(root))
    old = [write_file(root, "schedules/daily/2026-01-01/users-a.csv", 8), write_file(root, "users/users-b.csv", 8)]
    young = [write_file(root, "schedules/daily/2026-12-01/users-c.csv", 1), write_file(root, "ledger_postings/l-d.csv", 6)]
    # Request files follow their rows, never their age; other folders are not the platform's.
    others = [write_file(root, "requests/alice/users-e.csv", 30), write_file(root, "elsewhere/f.csv", 30)]
    dry = run_cleanup(resources, storage, instance, dry_run=True)["expire_files_without_request"]
    assert (dry["files"], dry["bytes_freed"]) == (2, 20) and all(p.exists() for p in old)
    done = run_cleanup(resources, storage, instance)["expire_files_without_request"]
    assert (done["files"], done["failed"]) == (2, 0)
    assert [p.exists() for p in old + young + others] == [False, False, True, True, True, True]
    assert run_cleanup(resources, storage, instance, days_without_request=0)["expire_files_without_request"]["files"] == 2


def test_files_of_schedules_and_launchpad_runs_expire_on_s3(resources, instance, s3_endpoint, tmp_path):
    url = f"s3://exports/unrequested-{time.time_ns()}"
    storage = S3Storage(url=url, staging_folder=str(tmp_path / "staging"))
    keys = ["schedules/hourly/2026-12-01/e.parquet", "users/u.csv", "requests/bob/r.csv"]
    s3 = boto3.client("s3")
    for key in keys:
        s3.put_object(Bucket="exports", Key=f"{urlparse(url).path.lstrip('/')}/{key}", Body=b"abc")
    assert run_cleanup(resources, storage, instance)["expire_files_without_request"]["files"] == 0  # all new
    done = run_cleanup(resources, storage, instance, days_without_request=0)["expire_files_without_request"]
    assert (done["files"], done["bytes_freed"]) == (2, 6)
    assert [exists(f"{url}/{key}") for key in keys] == [False, False, True]


HOSTILE_USER = "alice@example.com"


def stored_files(storage) -> list[str]:
    """Every file the storage holds, found by listing it (not by parsing a URI)."""
    if isinstance(storage, LocalStorage):
        root = storage.folder()
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".tmp" not in p.parts)
    bucket, _, prefix = storage.url.removeprefix("s3://").partition("/")
    listing = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")
    return sorted(item["Key"].removeprefix(f"{prefix}/") for item in listing.get("Contents", []))


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_retention_deletes_the_file_of_an_email_user_in_a_folder_with_a_space_and_an_accent(
    db, resources, instance, kind, request, tmp_path
):
    if kind == "local":
        storage = LocalStorage(root=str(tmp_path / "My Exports" / "Données"))
    else:
        request.getfixturevalue("s3_endpoint")
        storage = S3Storage(url=f"s3://exports/My Exports/Données-{time.time_ns()}", staging_folder=str(tmp_path / "staging"))
    done = export_request(db, resources, storage, user=HOSTILE_USER)
    [stored] = stored_files(storage)
    assert stored.startswith(f"requests/{HOSTILE_USER}/ledger_postings-")
    expire_now(db, done)
    cleanup = run_cleanup(resources, storage, instance)["expire_files"]
    assert (cleanup["files"], cleanup["bytes_freed"], cleanup["failed"]) == (1, done["file_bytes"], 0)
    assert stored_files(storage) == [] and row(db, done["id"])["status"] == "EXPIRED"
