"""The request sensor, tick by tick, against the real request table and a real test instance."""

from __future__ import annotations

import json

import dagster as dg
import psycopg
import pytest

from export_platform.definitions import defs
from export_platform.jobs import EXPORT_JOBS
from export_platform.requests.table import export_requests
from export_platform.catalog.export_types import REGISTRY
from export_platform.naming import EXPORT_TYPE_TAG, FORMAT_TAG, REQUEST_ID_TAG, REQUEST_KEY_TAG, REQUESTED_BY_TAG, user_tag
from export_platform.sensors.request_sensor import ROWS_PER_TICK
from support.readback import run_job
from support.request_rows import insert, row, tick


def ids(result: dg.SensorResult) -> list[int]:
    return [int(r.tags[REQUEST_ID_TAG]) for r in result.run_requests]


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
    assert request.run_key == row(db, good)["run_key"]
    assert request.job_name == REGISTRY.get("users").job_name
    assert request.tags == {
        REQUEST_ID_TAG: str(good), REQUEST_KEY_TAG: request.run_key, EXPORT_TYPE_TAG: "users", REQUESTED_BY_TAG: "alice",
        FORMAT_TAG: "csv.gz",
    }
    config = request.run_config["ops"]["plan_users"]["config"]
    assert config["format"] == "csv_gz" and config["filters"] == {"country_code": ["US", "GB"]}
    assert row(db, good)["status"] == "QUEUED" and row(db, good)["queued_at"] is not None
    for request_id, message in cases.items():
        failed = row(db, request_id)
        assert failed["status"] == "FAILED" and message in failed["error"], failed
        assert failed["finished_at"] is not None and failed["run_id"] is None
    # The run config the sensor built is one the job accepts.
    assert dg.validate_run_config(defs.resolve_job_def(REGISTRY.get("users").job_name), request.run_config)


def test_rows_committed_out_of_id_order_are_not_skipped(db, store, instance, database_url):
    with psycopg.connect(db.info.dsn) as slow_app:  # a long transaction holding a lower id
        early = insert(slow_app, "users")
        late = insert(db, "ledger_postings")
        assert early < late
        assert ids(tick(instance, store, database_url)) == [late]
        slow_app.commit()
    assert ids(tick(instance, store, database_url)) == [early]
    assert tick(instance, store, database_url).run_requests == []  # nothing twice


def test_a_tick_reads_a_bounded_batch(db, store, instance, database_url):
    inserted = [insert(db, "users") for _ in range(ROWS_PER_TICK + 5)]
    first = tick(instance, store, database_url)
    second = tick(instance, store, database_url)
    assert ids(first) == inserted[:ROWS_PER_TICK]
    assert ids(second) == inserted[ROWS_PER_TICK:]


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


def insert_raw(db, export_type, fmt, params_json: str, user="alice") -> int:
    """A row as an application's plain SQL would insert it, with params as JSON text that Python's
    own encoder could not produce (huge integers, deep nesting)."""
    return db.execute(
        "INSERT INTO export_requests (export_type, format, params, requested_by) VALUES (%s, %s, %s::jsonb, %s) RETURNING id",
        (export_type, fmt, params_json, user),
    ).fetchone()[0]


POISON = {
    # Values Postgres stores but Python cannot parse, or parses differently from a plain integer.
    '{"filters": {"driver_id": "+-5"}}': "filters.driver_id",
    '{"filters": {"driver_id": "--5"}}': "filters.driver_id",
    '{"filters": {"driver_id": "²"}}': "filters.driver_id",
    '{"filters": {"driver_id": "٣"}}': "filters.driver_id",
    '{"filters": {"driver_id": "' + "9" * 5000 + '"}}': "filters.driver_id",
    '{"filters": {"driver_id": ' + "9" * 5000 + "}}": "params",
    '{"filters": {"from_amount": ' + "9" * 5000 + "}}": "params",
    '{"filters": {"plate_number": ' + "[" * 3000 + "]" * 3000 + "}}": "params",
    "[" * 3000 + "]" * 3000: "params",
}


def test_a_poison_row_between_good_rows_delays_none(db, store, instance, database_url):
    first = insert(db, "users")
    poisons = {insert_raw(db, "ezpass_transactions", "csv", params): field for params, field in POISON.items()}
    last = insert(db, "ledger_postings")
    result = tick(instance, store, database_url)
    assert [r.run_key for r in result.run_requests] == [row(db, first)["run_key"], row(db, last)["run_key"]]
    assert row(db, first)["status"] == row(db, last)["status"] == "QUEUED"
    for request_id, field in poisons.items():
        failed = row(db, request_id)
        assert failed["status"] == "FAILED" and failed["error"].startswith(f"{field}"), failed["error"][:200]
        assert len(failed["error"]) < 1_000
    assert tick(instance, store, database_url).run_requests == []  # quarantined: never offered again


@pytest.mark.parametrize("finished", ["COMPLETED", "FAILED", "CANCELLED", "EXPIRED"])
def test_a_cancel_of_a_finished_row_is_ignored_by_the_database(db, store, finished):
    request_id = insert(db, status=finished)  # the status trigger allows no move from PENDING to each of these
    db.execute("UPDATE export_requests SET file_uri = 'file:///x.csv', error = 'e' WHERE id = %s", (request_id,))
    before = row(db, request_id)
    cancel = db.execute("UPDATE export_requests SET status = 'CANCEL_REQUESTED' WHERE id = %s", (request_id,))
    assert cancel.rowcount == 0
    assert row(db, request_id) == before


def test_an_open_row_can_still_be_cancelled_by_sql(db, store):
    request_id = insert(db)
    db.execute("UPDATE export_requests SET status = 'CANCEL_REQUESTED' WHERE id = %s", (request_id,))
    assert row(db, request_id)["status"] == "CANCEL_REQUESTED"


def test_a_run_of_another_table_with_the_same_request_id_is_not_this_rows_run(db, store, instance, database_url):
    """Two export databases on one Dagster instance, or a recreated table: ids repeat, run keys do not."""
    request_id = insert(db)
    [job] = [j for j in EXPORT_JOBS if j.name == REGISTRY.get("users").job_name]
    earlier = instance.create_run_for_job(
        job, run_config={}, tags={REQUEST_ID_TAG: str(request_id), "dagster/run_key": str(request_id)}
    )
    instance.report_run_canceled(earlier)
    [run_request] = tick(instance, store, database_url).run_requests
    assert run_request.run_key not in (str(request_id), earlier.run_id)
    db.execute("UPDATE export_requests SET updated_at = now() - interval '1 hour' WHERE id = %s", (request_id,))
    tick(instance, store, database_url)
    assert (row(db, request_id)["status"], row(db, request_id)["run_id"]) == ("QUEUED", None)


def test_a_row_whose_run_never_appears_is_offered_again_then_failed(db, store, instance, database_url):
    request_id = insert(db)
    for offer in range(1, 4):
        # Each run request is "lost" (never launched); the next tick past the wait offers it again.
        assert ids(tick(instance, store, database_url)) == [request_id]
        assert row(db, request_id)["offers"] == offer
        db.execute("UPDATE export_requests SET queued_at = now() - interval '1 hour' WHERE id = %s", (request_id,))
    assert tick(instance, store, database_url).run_requests == []
    final = row(db, request_id)
    assert final["status"] == "FAILED" and "no Dagster run appeared" in final["error"]


def test_users_sharing_a_long_prefix_get_distinct_readable_tags(db, store, instance, database_url):
    prefix = "team-analytics-" * 5
    first, second = insert(db, user=prefix + "alice"), insert(db, user=prefix + "bob")
    tags = {int(r.tags[REQUEST_ID_TAG]): r.tags[REQUESTED_BY_TAG] for r in tick(instance, store, database_url).run_requests}
    assert tags[first] != tags[second]
    assert all(len(t) <= 63 and t.startswith(prefix[:40]) for t in tags.values())
    assert user_tag("bob") == "bob" and user_tag(None) == "anonymous"


def test_a_rejected_request_is_told_on_its_row_not_in_the_daemon_log(db, store, instance, database_url, monkeypatch):
    import logging

    logged: list[tuple[int, str]] = []
    log = logging.Logger._log
    monkeypatch.setattr(logging.Logger, "_log", lambda self, level, msg, *a, **k: (logged.append((level, str(msg))),
                                                                                   log(self, level, msg, *a, **k)))
    bad = insert(db, "users", params={"filters": {"bogus": 1}})
    tick(instance, store, database_url)
    assert "filters.bogus: unknown filter" in row(db, bad)["error"]
    rejected = [level for level, message in logged if f"request {bad} rejected" in message]
    assert rejected == [logging.DEBUG]  # was INFO: a line in the daemon's log for every bad row an application sends


def test_a_request_is_planned_once_and_its_run_checks_that_same_plan(db, store, instance, database_url, resources, monkeypatch):
    from export_platform.jobs import run_config_for
    from export_platform.planning import plan as planning

    params = {"filters": {"country_code": "US,GB", "signup_date_from": "2020-01-01"}, "columns": "email, id",
              "labels": {"email": "Adresse e-mail"}, "csv": {"delimiter": ";"}}
    expected = planning.plan_request("users", "csv.gz", params)
    request_id = insert(db, "users", "csv.gz", params, user="alice@example.com")
    plans: list[planning.ExportPlan] = []
    plan_export = planning.plan_export
    monkeypatch.setattr(planning, "plan_export", lambda *a, **k: plans.append(plan_export(*a, **k)) or plans[-1])

    [request] = tick(instance, store, database_url).run_requests
    assert plans == [expected]  # the tick plans the row once
    assert request.run_config == run_config_for(expected)  # and launches it with the plan's canonical form
    [op_config] = request.run_config["ops"].values()
    result = run_job("users", op_config["config"], resources, tags=request.tags)
    assert result.success
    # The run's plan op checked that one form back into the same plan, and nothing planned it again.
    assert result.output_for_node("plan_users") == expected and plans == [expected, expected]
    assert row(db, request_id)["status"] == "COMPLETED"
