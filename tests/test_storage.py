"""Local and S3-compatible storage (a real moto server): per-user keys, signed URLs, fresh links,
delete, and the request table's migration that added the link columns."""

from __future__ import annotations

import hashlib
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlparse

import boto3
import psycopg
import pytest
import sqlalchemy as sa

from export_platform.requests import table as rt
from export_platform.requests.client import ExportClient, Refused
from export_platform.requests.store import RequestStore
from export_platform.resources.storage import LocalStorage, S3Storage, StorageError, file_uri_path
from support.readback import database_beside, db_rows, file_rows
from support.request_rows import LEDGER_COLUMNS as COLUMNS
from support.request_rows import export_request, insert, row


@pytest.fixture
def s3(s3_endpoint, tmp_path) -> S3Storage:
    return S3Storage(url="s3://exports/ci", download_url_seconds=120, staging_folder=str(tmp_path / "staging"))


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def test_s3_export_is_published_under_the_user_with_a_working_signed_url(db, resources, s3, tmp_path):
    final = export_request(db, resources, s3)
    assert final["status"] == "COMPLETED"
    assert final["file_uri"].startswith("s3://exports/ci/requests/alice_o_hara/ledger_postings-")
    body = fetch(final["download_url"])
    assert hashlib.sha256(body).hexdigest() == final["sha256"] and len(body) == final["file_bytes"]
    (tmp_path / "download.csv").write_bytes(body)
    assert file_rows(db, "ledger_postings", COLUMNS, "csv", tmp_path / "download.csv") == db_rows(
        db, "ledger_postings", COLUMNS
    )
    assert abs(final["download_url_expires_at"] - final["finished_at"] - timedelta(seconds=120)) < timedelta(seconds=5)
    assert abs(final["expires_at"] - final["finished_at"] - timedelta(days=7)) < timedelta(seconds=5)
    assert list((tmp_path / "staging").iterdir()) == []  # the staged file went up and was removed


def test_local_storage_uses_the_user_prefix_and_cannot_sign(db, resources, storage_root):
    final = export_request(db, resources, resources["storage"], user="bob")
    assert final["file_uri"].startswith((storage_root / "requests" / "bob").as_uri())
    assert final["download_url"] is None and final["expires_at"] is not None
    with pytest.raises(Refused, match="cannot sign"):
        ExportClient(db.info.dsn, resources["storage"]).fresh_url(final["id"])


def test_fresh_url_is_minted_for_a_live_file_and_refused_otherwise(db, resources, s3):
    final = export_request(db, resources, s3)
    client = ExportClient(db.info.dsn, s3)
    before = datetime.now(timezone.utc)
    url = client.fresh_url(final["id"], seconds=2)
    after = datetime.now(timezone.utc)
    assert parse_qs(urlparse(url).query)["X-Amz-Expires"] == ["2"]
    assert fetch(url) == fetch(final["download_url"])
    stored = row(db, final["id"])
    assert stored["download_url"] == url
    # The row says when the new link expires: 2 s after it was minted.
    assert before + timedelta(seconds=2) <= stored["download_url_expires_at"] <= after + timedelta(seconds=2)

    db.execute("UPDATE export_requests SET expires_at = now() - interval '1 second' WHERE id = %s", (final["id"],))
    with pytest.raises(Refused, match="expired"):
        client.fresh_url(final["id"])
    failed = insert(db, "nope")
    db.execute("UPDATE export_requests SET status = 'FAILED' WHERE id = %s", (failed,))
    with pytest.raises(Refused, match="FAILED, not COMPLETED"):
        client.fresh_url(failed)


def test_delete_removes_the_object_and_expires_the_row(db, resources, s3):
    final = export_request(db, resources, s3)
    client = ExportClient(db.info.dsn, s3)
    assert client.delete(final["id"]) == final["file_bytes"]
    key = urlparse(final["file_uri"]).path.lstrip("/")
    assert boto3.client("s3").list_objects_v2(Bucket="exports", Prefix=key).get("KeyCount") == 0
    deleted = row(db, final["id"])
    assert (deleted["status"], deleted["expired_reason"], deleted["download_url"]) == ("EXPIRED", "deleted", None)
    with pytest.raises(Refused, match="EXPIRED"):
        client.delete(final["id"])


def test_migration_upgrades_a_version_1_table_in_place(database_url):
    url = database_beside(database_url, "migration_check")
    store = RequestStore(url=url)
    store.migrate()
    with psycopg.connect(url, autocommit=True) as conn:  # make it look like a release-1 table
        conn.execute("DROP TRIGGER export_requests_status_rules ON export_requests")
        conn.execute(
            "ALTER TABLE export_requests DROP COLUMN download_url_expires_at, DROP COLUMN expired_reason, "
            "DROP COLUMN run_key, DROP COLUMN offers, DROP COLUMN file_key"
        )
        conn.execute("UPDATE export_platform_schema SET version = 1 WHERE component = 'export_requests'")
        conn.execute("INSERT INTO export_requests (export_type, requested_by, status) VALUES ('users', 'old', 'COMPLETED')")
        conn.execute("INSERT INTO export_requests (export_type, requested_by) VALUES ('users', 'old2')")
    assert RequestStore(url=url).migrate() == rt.SCHEMA_VERSION == 6
    with RequestStore(url=url).transaction() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("export_requests")}
        assert {"download_url_expires_at", "expired_reason", "run_key", "offers", "file_key"} <= columns
        indexes = {i["name"]: i["column_names"] for i in sa.inspect(conn).get_indexes("export_requests")}
        assert indexes["export_requests_by_file_key"] == ["file_key"] and "export_requests_by_file" not in indexes
        rows = conn.execute(sa.text("SELECT requested_by, run_key FROM export_requests ORDER BY id")).all()
        assert [r.requested_by for r in rows] == ["old", "old2"] and len({r.run_key for r in rows}) == 2
        cancel = sa.text("UPDATE export_requests SET status = 'CANCEL_REQUESTED' WHERE requested_by = 'old'")
        assert conn.execute(cancel).rowcount == 0  # the trigger is there too
    assert RequestStore(url=url).migrate() == rt.SCHEMA_VERSION  # and again: nothing to do


def test_discarding_a_runs_temp_removes_everything_its_writers_left(tmp_path):
    storage = LocalStorage(root=str(tmp_path))
    folder = storage.run_temp_folder("run-1")
    for name in ("export.xlsx", "tmpk2j3h4", "export.csv.part1"):  # the file, a spool file, a part
        (folder / name).write_bytes(b"x")
    other = storage.run_temp_folder("run-2") / "export.csv"
    other.write_bytes(b"y")
    assert storage.discard_temp("run-1") == 3
    assert not folder.exists() and other.exists()
    assert storage.discard_temp("run-1") == 0


# The request table's row of the schema versions (the HTTP API's tables have their own).
REQUEST_TABLE = "WHERE component = 'export_requests'"


def test_resources_check_the_schema_and_never_migrate_or_lower_it(database_url):
    url = database_beside(database_url, "schema_version_check")
    with pytest.raises(rt.SchemaMismatch, match="not set up.*db migrate"):
        RequestStore(url=url).engine()
    RequestStore(url=url).migrate()
    assert RequestStore(url=url).engine() is not None
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"UPDATE export_platform_schema SET version = %s {REQUEST_TABLE}", (rt.SCHEMA_VERSION + 1,))
        with pytest.raises(rt.SchemaMismatch, match="newer than this release"):
            RequestStore(url=url).engine()
        with pytest.raises(rt.SchemaMismatch, match="newer than this release"):
            RequestStore(url=url).migrate()
        assert conn.execute(f"SELECT version FROM export_platform_schema {REQUEST_TABLE}").fetchone()[0] == rt.SCHEMA_VERSION + 1
        conn.execute(f"UPDATE export_platform_schema SET version = 2 {REQUEST_TABLE}")
        with pytest.raises(rt.SchemaMismatch, match="version 2; this release needs"):
            RequestStore(url=url).engine()
        assert conn.execute(f"SELECT version FROM export_platform_schema {REQUEST_TABLE}").fetchone()[0] == 2


HOSTILE_USER = "alice@example.com"


@pytest.mark.parametrize(("user", "folder"), [
    (HOSTILE_USER, HOSTILE_USER), ("bob+exports@example.com", "bob+exports@example.com"), ("Zoë 李/..", "Zoë_李_..")
])
def test_s3_keys_keep_a_user_as_typed_under_a_prefix_with_a_space_and_an_accent(db, resources, s3_endpoint, tmp_path, user, folder):
    prefix = f"My Exports/Données-{time.time_ns()}"
    storage = S3Storage(url=f"s3://exports/{prefix}", staging_folder=str(tmp_path / "staging"))
    final = export_request(db, resources, storage, user=user)
    assert final["file_key"].startswith(f"requests/{folder}/ledger_postings-")
    assert final["file_uri"] == f"s3://exports/{prefix}/{final['file_key']}"
    assert hashlib.sha256(fetch(final["download_url"])).hexdigest() == final["sha256"]
    listed = boto3.client("s3").list_objects_v2(Bucket="exports", Prefix=f"{prefix}/")["Contents"]
    assert [o["Key"] for o in listed] == [f"{prefix}/{final['file_key']}"]
    assert ExportClient(db.info.dsn, storage).delete(final["id"]) == final["file_bytes"]
    assert boto3.client("s3").list_objects_v2(Bucket="exports", Prefix=f"{prefix}/").get("KeyCount") == 0


def test_a_local_row_holds_the_key_and_a_uri_of_the_same_file(db, resources, tmp_path):
    storage = LocalStorage(root=str(tmp_path / "My Exports" / "Données"))
    final = export_request(db, resources, storage, user=HOSTILE_USER)
    path = storage.folder() / final["file_key"]
    assert path.is_file() and path.parent.name == HOSTILE_USER
    assert final["file_uri"] == path.as_uri() and "%40" in final["file_uri"] and "Donn%C3%A9es" in final["file_uri"]
    assert file_uri_path(final["file_uri"]) == path


def test_a_row_from_before_keys_is_found_by_its_uri_decoded_once(db, resources, tmp_path):
    storage = LocalStorage(root=str(tmp_path / "My Exports" / "Données"))
    final = export_request(db, resources, storage, user=HOSTILE_USER)
    db.execute("UPDATE export_requests SET file_key = NULL WHERE id = %s", (final["id"],))  # as release 4 wrote it
    assert ExportClient(db.info.dsn, storage).delete(final["id"]) == final["file_bytes"]
    assert not (storage.folder() / final["file_key"]).exists()


def test_a_row_of_another_storage_is_refused_not_expired(db, resources, tmp_path):
    elsewhere = LocalStorage(root=str(tmp_path / "old root"))
    final = export_request(db, resources, elsewhere, user=HOSTILE_USER)
    current = LocalStorage(root=str(tmp_path / "new root"))
    client = ExportClient(db.info.dsn, current)
    with pytest.raises(StorageError, match="not in the storage"):
        client.delete(final["id"])
    assert row(db, final["id"])["status"] == "COMPLETED" and (elsewhere.folder() / final["file_key"]).is_file()
