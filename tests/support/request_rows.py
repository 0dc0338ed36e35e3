"""The request table from a test's side: insert rows as an application does, read them back, tick
the request sensor over them, run one request's export in-process."""

from __future__ import annotations

import json

import dagster as dg

from export_platform.jobs import EXPORT_JOBS
from export_platform.naming import REQUEST_ID_TAG, REQUESTED_BY_TAG
from export_platform.requests.table import export_requests
from export_platform.resources.postgres import PostgresResource
from export_platform.sensors.request_sensor import build_request_sensor

from .readback import run_job

SENSOR = build_request_sensor(EXPORT_JOBS)
# What `export_request` exports of ledger_postings.
LEDGER_COLUMNS = ["id", "amount", "memo"]


def insert(conn, export_type="users", fmt="csv", params=None, user="alice", status="PENDING") -> int:
    return conn.execute(
        "INSERT INTO export_requests (export_type, format, params, requested_by, status) "
        "VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (export_type, fmt, json.dumps(params or {}), user, status),
    ).fetchone()[0]


def row(conn, request_id) -> dict:
    # params as text: a poison row's JSON is one Python cannot decode.
    columns = ", ".join(f"{c.name}::text" if c.name == "params" else c.name for c in export_requests.columns)
    cursor = conn.execute(f"SELECT {columns} FROM export_requests WHERE id = %s", (request_id,))
    return dict(zip([c.name for c in cursor.description], cursor.fetchone()))


def tick(instance, store, database_url) -> dg.SensorResult:
    resources = {"requests": store, "postgres": PostgresResource(url=database_url)}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        return SENSOR(context)


def export_request(db, resources, storage, user="alice o'hara") -> dict:
    """A ledger_postings request exported to `storage` as its run would; the row once it is done."""
    request_id = insert(db, "ledger_postings", user=user, status="QUEUED")
    result = run_job(
        "ledger_postings",
        {"format": "csv", "columns": LEDGER_COLUMNS},
        {**resources, "storage": storage},
        tags={REQUEST_ID_TAG: str(request_id), REQUESTED_BY_TAG: user},
    )
    assert result.success
    return row(db, request_id)
