"""The request sensor, tick by tick, against the real request table and a real test instance."""

from __future__ import annotations

import json

import dagster as dg
import psycopg
import pytest

from export_platform.definitions import defs
from export_platform.jobs import EXPORT_JOBS
from export_platform.resources.postgres import PostgresResource
from export_platform.resources.requests import REQUEST_ID_TAG, RequestStore
from export_platform.sensors.request_sensor import ROWS_PER_TICK, build_request_sensor
from readback import run_job

SENSOR = build_request_sensor(EXPORT_JOBS)


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def store(database_url):
    store = RequestStore(url=database_url)
    store.engine()  # creates/migrates the table
    return store


def insert(db, export_type, fmt="csv", params=None, user="alice") -> int:
    return db.execute(
        "INSERT INTO export_requests (export_type, format, params, requested_by) VALUES (%s, %s, %s, %s) RETURNING id",
        (export_type, fmt, json.dumps(params or {}), user),
    ).fetchone()[0]


def row(db, request_id):
    cursor = db.execute("SELECT * FROM export_requests WHERE id = %s", (request_id,))
    names = [c.name for c in cursor.description]
    return dict(zip(names, cursor.fetchone()))


def tick(instance, store, database_url) -> dg.SensorResult:
    resources = {"requests": store, "postgres": PostgresResource(url=database_url)}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        return SENSOR(context)


@pytest.fixture(autouse=True)
def no_leftover_pending(db, store):
    db.execute("UPDATE export_requests SET status = 'CANCELLED' WHERE status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED', 'EXPIRED')")


def test_valid_rows_become_run_requests_and_bad_rows_fail_with_the_field(db, store, instance, database_url):
    good = insert(db, "users", "csv.gz", {"filters": {"country_code": "US,GB"}, "columns": ["id", "email"]})
    cases = {
        insert(db, "nope"): "export_type: unknown export type 'nope'",
        insert(db, "users", "xls"): "format: unknown format 'xls'",
        insert(db, "users", params={"filters": {"bogus": 1}}): "filters.bogus: unknown filter",
        insert(db, "users", params={"columns": ["password"]}): "columns: unknown column 'password'",
        insert(db, "users", params={"filters": {"lifetime_value_min": "ten"}}): "filters.lifetime_value_min",
        insert(db, "users", params={"filters": {"signup_date_from": "2024-02-01", "signup_date_to": "2024-01-01"}}): "reversed range",
        insert(db, "users", params={"csv": {"header": "maybe"}}): "csv.header",
        insert(db, "users", params={"sort": "name"}): "params.sort: unknown option",
        insert(db, "users", params=["not", "an", "object"]): "params: expected a JSON object",
    }
    result = tick(instance, store, database_url)

    [request] = result.run_requests
    assert request.run_key == str(good)
    assert request.job_name == "export_users"
    assert request.tags == {REQUEST_ID_TAG: str(good), "export_type": "users", "requested_by": "alice"}
    config = request.run_config["ops"]["plan_users"]["config"]
    assert config["format"] == "csv_gz" and config["filters"] == {"country_code": ["US", "GB"]}
    assert row(db, good)["status"] == "QUEUED" and row(db, good)["queued_at"] is not None
    for request_id, message in cases.items():
        failed = row(db, request_id)
        assert failed["status"] == "FAILED" and message in failed["error"], failed
        assert failed["finished_at"] is not None and failed["run_id"] is None
    # The run config the sensor built is one the job accepts.
    assert dg.validate_run_config(defs.resolve_job_def("export_users"), request.run_config)


def test_rows_committed_out_of_id_order_are_not_skipped(db, store, instance, database_url):
    with psycopg.connect(db.info.dsn) as slow_app:  # a long transaction holding a lower id
        early = insert(slow_app, "users")
        late = insert(db, "ledger_postings")
        assert early < late
        assert [r.run_key for r in tick(instance, store, database_url).run_requests] == [str(late)]
        slow_app.commit()
    assert [r.run_key for r in tick(instance, store, database_url).run_requests] == [str(early)]
    assert tick(instance, store, database_url).run_requests == []  # nothing twice


def test_a_tick_reads_a_bounded_batch(db, store, instance, database_url):
    ids = [insert(db, "users") for _ in range(ROWS_PER_TICK + 5)]
    first = tick(instance, store, database_url).run_requests
    second = tick(instance, store, database_url).run_requests
    assert [r.run_key for r in first] == [str(i) for i in ids[:ROWS_PER_TICK]]
    assert [r.run_key for r in second] == [str(i) for i in ids[ROWS_PER_TICK:]]


def test_cancel_before_a_run_exists_ends_cancelled(db, store, instance, database_url):
    request_id = insert(db, "users")
    db.execute("UPDATE export_requests SET status = 'CANCEL_REQUESTED' WHERE id = %s", (request_id,))
    assert tick(instance, store, database_url).run_requests == []
    assert row(db, request_id)["status"] == "CANCELLED"


def test_idempotency_key_prevents_a_second_request(db, store):
    sql = (
        "INSERT INTO export_requests (export_type, format, requested_by, idempotency_key) "
        "VALUES ('users', 'csv', 'bob', 'click-1') ON CONFLICT DO NOTHING RETURNING id"
    )
    assert db.execute(sql).fetchone() is not None
    assert db.execute(sql).fetchone() is None
    assert db.execute("SELECT count(*) FROM export_requests WHERE idempotency_key = 'click-1'").fetchone()[0] == 1


def test_run_writes_its_lifecycle_to_the_request_row(db, store, resources):
    request_id = insert(db, "ledger_postings")
    db.execute("UPDATE export_requests SET status = 'QUEUED' WHERE id = %s", (request_id,))
    result = run_job("ledger_postings", {"format": "parquet"}, resources, tags={REQUEST_ID_TAG: str(request_id)})
    final = row(db, request_id)
    published = result.output_for_node("publish_export")
    assert final["status"] == "COMPLETED" and final["run_id"] == result.run_id
    assert final["row_count"] == final["total_rows"] == final["progress_rows"] == 3000
    assert float(final["progress_pct"]) == 100.0
    assert (final["file_uri"], final["file_bytes"], final["sha256"]) == (published.uri, published.bytes, published.sha256)
    assert final["created_at"] <= final["started_at"] <= final["finished_at"]
