"""Request latency: from the application's INSERT to COMPLETED, through a real daemon.

    .venv/bin/python benchmarks/request_latency.py [--requests 10] [--spacing 0]

Starts `dagster-daemon` on a throwaway DAGSTER_HOME and Dagster database (beside the configured
or embedded Postgres), inserts N requests for ~1,000 rows each (two days of ledger_postings),
and reports p50/p95 of created→COMPLETED with the phases: created→QUEUED (the sensor),
QUEUED→RUNNING (queue and run-worker start), RUNNING→COMPLETED (the export itself).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from export_platform.embedded_postgres import database_url
from export_platform.instance import DAGSTER_DATABASE_URL_ENV, prepare_dagster_home, start_daemon, wait_for_daemon
from export_platform.resources.requests import RequestStore
from export_platform.sample_data import seed

BENCH_DAGSTER_DATABASE = "dagster_latency_bench"


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--spacing", type=float, default=0.0, help="seconds between inserts (0: all at once)")
    args = parser.parse_args()

    import os

    url = database_url()
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('ledger_postings') IS NULL OR NOT EXISTS (SELECT FROM ledger_postings WHERE id = 20000)").fetchone()[0]:
            seed(conn, 20_000, ("ledger_postings",))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(BENCH_DAGSTER_DATABASE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BENCH_DAGSTER_DATABASE)))
    RequestStore(url=url).migrate()
    os.environ[DAGSTER_DATABASE_URL_ENV] = (
        make_url(url).set(database=BENCH_DAGSTER_DATABASE, drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    )
    tmp = Path(tempfile.mkdtemp(prefix="export_platform_latency_"))
    env = {**os.environ, **prepare_dagster_home(tmp / "dagster_home", url), "EXPORT_PLATFORM_STORAGE_URL": str(tmp / "exports")}
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    daemon = start_daemon(env, tmp / "daemon.log")
    try:
        wait_for_daemon(instance, daemon)
        time.sleep(5)  # let the first sensor ticks (which set up cursors) pass, as in a running deployment
        ids = []
        with psycopg.connect(url, autocommit=True) as conn:
            for i in range(args.requests):
                day = date(2023, 1, 3) + timedelta(days=2 * i)
                params = {"filters": {"from_posting_date": day.isoformat(), "to_posting_date": (day + timedelta(days=1)).isoformat()}}
                ids.append(conn.execute(
                    "INSERT INTO export_requests (export_type, format, params, requested_by) "
                    "VALUES ('ledger_postings', 'csv', %s, %s) RETURNING id",
                    (json.dumps(params), f"bench{i % 5}"),
                ).fetchone()[0])
                time.sleep(args.spacing)
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                rows = conn.execute(
                    "SELECT id, status, row_count, created_at, queued_at, started_at, finished_at, error "
                    "FROM export_requests WHERE id = ANY(%s)", (ids,)
                ).fetchall()
                if all(r[1] in ("COMPLETED", "FAILED", "CANCELLED") for r in rows):
                    break
                time.sleep(0.2)
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
    failed = [r for r in rows if r[1] != "COMPLETED"]
    if failed:
        raise SystemExit(f"requests did not complete: {failed}")
    phases = {
        "created→COMPLETED": [(r[6] - r[3]).total_seconds() for r in rows],
        "created→QUEUED": [(r[4] - r[3]).total_seconds() for r in rows],
        "QUEUED→RUNNING": [(r[5] - r[4]).total_seconds() for r in rows],
        "RUNNING→COMPLETED": [(r[6] - r[5]).total_seconds() for r in rows],
    }
    print(f"{len(rows)} requests, {statistics.mean(r[2] for r in rows):,.0f} rows each on average")
    print(f"{'phase':<20}{'p50 s':>8}{'p95 s':>8}{'max s':>8}")
    for name, values in phases.items():
        print(f"{name:<20}{percentile(values, 50):>8.1f}{percentile(values, 95):>8.1f}{max(values):>8.1f}")


if __name__ == "__main__":
    main()
