"""Request latency: from the application's INSERT to COMPLETED, through a real daemon and pool.

    .venv/bin/python benchmarks/request_latency.py [--scenario burst|spaced|sequential|large]
        [--requests 10] [--spacing 2] [--baseline]

Starts the warm run-worker pool and the daemon (as `export-platform dev` does) on a throwaway
DAGSTER_HOME and Dagster database (beside the configured or embedded Postgres), inserts requests
and reports p50/p95 of created→COMPLETED with the phases: created→QUEUED (the sensor),
QUEUED→RUNNING (queue and run-worker start), RUNNING→COMPLETED (the export itself).

- burst: N requests of ~1,000 rows (two days of ledger_postings, csv) inserted at once;
- spaced: the same, `--spacing` seconds apart;
- sequential: one at a time, each inserted once the previous one has completed;
- large: one 100,000-row csv request at a time (200 days of ledger_postings), N times.

`--baseline` measures the platform as it was before warm workers: Dagster's own `dagster-daemon`
entry point (sensor loop 5 s) and no pool, so every run is a new process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from export_platform.tooling.embedded_postgres import local_database_url
from export_platform import processes
from export_platform.processes import CODE_LOCATION, ProcessSpec, SensorHeartbeat
from export_platform.tooling.instance import DAGSTER_DATABASE_URL_ENV, prepare_dagster_home
from export_platform.requests.store import RequestStore
from export_platform.tooling.sample_data import create_schema, seed

BENCH_DAGSTER_DATABASE = "dagster_latency_bench"
LEDGER_ROWS = 200_000  # 500 a day: two days are 1,000 rows, 200 days 100,000
DONE = ("COMPLETED", "FAILED", "CANCELLED")


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def _params(i: int, days: int) -> dict:
    first = date(2023, 1, 3) + timedelta(days=days * i % 300)
    return {"filters": {"from_posting_date": first.isoformat(), "to_posting_date": (first + timedelta(days=days - 1)).isoformat()}}


def _insert(conn, params: dict, user: str) -> int:
    return conn.execute(
        "INSERT INTO export_requests (export_type, format, params, requested_by) VALUES ('ledger_postings', 'csv', %s, %s) RETURNING id",
        (json.dumps(params), user),
    ).fetchone()[0]


def _rows(conn, ids: list[int]) -> list[tuple]:
    return conn.execute(
        "SELECT id, status, row_count, created_at, queued_at, started_at, finished_at, error FROM export_requests WHERE id = ANY(%s)",
        (ids,),
    ).fetchall()


def _wait(conn, ids: list[int], timeout: float = 900) -> list[tuple]:
    deadline = time.monotonic() + timeout
    while (rows := _rows(conn, ids)) and not all(r[1] in DONE for r in rows):
        if time.monotonic() > deadline:
            raise SystemExit(f"requests did not finish in {timeout} s")
        time.sleep(0.1)
    return rows


def _scenario(conn, args) -> list[tuple]:
    days = 200 if args.scenario == "large" else 2
    if args.scenario in ("sequential", "large"):
        # The large request is the same range each time (200 days from the first full one).
        return [row for i in range(args.requests) for row in _wait(conn, [_insert(conn, _params(i if days == 2 else 0, days), "bench")])]
    ids = []
    for i in range(args.requests):
        ids.append(_insert(conn, _params(i, days), f"bench{i % 5}"))
        time.sleep(args.spacing if args.scenario == "spaced" else 0)
    return _wait(conn, ids)


@contextmanager
def warm_stack(url: str, baseline: bool = False) -> Iterator[dict]:
    """The warm run-worker pool, the code server and the daemon (`export-platform dev`'s, from
    export_platform/processes.py) on a throwaway DAGSTER_HOME and Dagster database beside `url`,
    ticking when this yields; the environment."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(BENCH_DAGSTER_DATABASE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BENCH_DAGSTER_DATABASE)))
    RequestStore(url=url).migrate()
    os.environ[DAGSTER_DATABASE_URL_ENV] = (
        make_url(url).set(database=BENCH_DAGSTER_DATABASE, drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    )
    tmp = Path(tempfile.mkdtemp(prefix="export_platform_latency_"))
    env = {**os.environ, **prepare_dagster_home(tmp / "dagster_home", url), "EXPORT_PLATFORM_STORAGE_URL": str(tmp / "exports")}
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    if baseline:  # Dagster's own entry point, with a code server of its own
        daemon = str(Path(sys.executable).with_name("dagster-daemon"))
        specs = [ProcessSpec("dagster-daemon", (daemon, "run", "-m", CODE_LOCATION), env, env["DAGSTER_HOME"],
                             log=tmp / "daemon.log", ready=SensorHeartbeat())]
    else:
        specs = processes.stack_specs(env, processes.free_port(), instance.run_launcher.workers)
    running = processes.Processes(instance)
    try:
        running.start_all(specs)
        for spec in specs:
            running.wait_ready(spec.name)
        time.sleep(5)  # let the first sensor ticks (which set up cursors) pass, as in a running deployment
        yield env
    finally:
        running.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=("burst", "spaced", "sequential", "large"), default="burst")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--spacing", type=float, default=2.0, help="seconds between inserts (scenario spaced)")
    parser.add_argument("--baseline", action="store_true", help="Dagster's daemon entry point and no pool")
    args = parser.parse_args()

    url = local_database_url()
    with psycopg.connect(url, autocommit=True) as conn:
        create_schema(conn)  # a database seeded before the ledger's index gets it
        present = conn.execute("SELECT to_regclass('ledger_postings') IS NOT NULL").fetchone()[0]
        if not present or not conn.execute("SELECT EXISTS (SELECT FROM ledger_postings WHERE id = %s)", (LEDGER_ROWS,)).fetchone()[0]:
            seed(conn, LEDGER_ROWS, ("ledger_postings",))
    with warm_stack(url, args.baseline), psycopg.connect(url, autocommit=True) as conn:
        rows = _scenario(conn, args)
    failed = [r for r in rows if r[1] != "COMPLETED"]
    if failed:
        raise SystemExit(f"requests did not complete: {failed}")
    phases = {
        "created→COMPLETED": [(r[6] - r[3]).total_seconds() for r in rows],
        "created→QUEUED": [(r[4] - r[3]).total_seconds() for r in rows],
        "QUEUED→RUNNING": [(r[5] - r[4]).total_seconds() for r in rows],
        "RUNNING→COMPLETED": [(r[6] - r[5]).total_seconds() for r in rows],
    }
    mode = "baseline (no pool, 5 s sensor loop)" if args.baseline else "warm pool"
    print(f"{args.scenario}, {mode}: {len(rows)} requests, {statistics.mean(r[2] for r in rows):,.0f} rows each on average")
    print(f"{'phase':<20}{'p50 s':>8}{'p95 s':>8}{'max s':>8}")
    for name, values in phases.items():
        print(f"{name:<20}{percentile(values, 50):>8.1f}{percentile(values, 95):>8.1f}{max(values):>8.1f}")


if __name__ == "__main__":
    main()
