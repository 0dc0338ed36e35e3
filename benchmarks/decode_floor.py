"""Where an export's CPU goes, part by part, and the floor that sets on this machine's cores.

    .venv/bin/python benchmarks/decode_floor.py [--rows 10000000] [--repeat 2]

Measures, on `users` (seeded to --rows when it holds another number), the parts of
`export-platform run users --order none` one at a time, in this process (no Dagster):
  - server, binary / csv: the export's own SELECT as `COPY (...) TO '/dev/null'` inside the
    server, so no client work at all: one backend's time to produce the rows (needs a superuser,
    as the embedded Postgres's role is);
  - server, the export's csv SELECT (`sql.csv_statement`: dates and timestamps formatted as the
    writers format them) as csv COPY to /dev/null: the server's share of the csv path;
  - DuckDB, 1 stream / N streams: the export's read path (`PostgresResource.snapshot_stream`, the
    snapshot, the count, the page streams, DuckDB's scanner) drained, every batch dropped;
  - ADBC, 1 stream: the previous reader (ADBC's binary COPY decoding to Arrow), drained;
  - + Polars → parquet / csv: the DuckDB streams written as the extract op writes them (`sink_streams`);
  - server CSV → file (asyncpg): the csv path (`write_server_csv`), N streams into one file;
  - psycopg text COPY: what a Python client built on libpq's one-row-per-call COPY API pays, the
    rows written nowhere.
Wall seconds and this process's CPU seconds (the server's backends are not in it), best of
--repeat. The last lines add up the floor: the server's binary COPY plus the client's decoding and
encoding, divided among the cores, is the least an export in no order can take here, before the
process's start-up (Python, Dagster, the run) is counted.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql as pgsql

from export_platform.planning import pg_types, sql
from export_platform.planning.plan import plan_request
from export_platform.planning.streams import Reading
from export_platform.resources.postgres import PostgresResource
from export_platform.sinks.arrow_source import Interleaved
from export_platform.sinks.parts import sink_streams
from export_platform.sinks.server_csv import write_server_csv
from export_platform.tooling.embedded_postgres import local_database_url
from export_platform.tooling.sample_data import seed


def _timed(work: Callable[[], None], repeat: int) -> tuple[float, float]:
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best


def _export(postgres: PostgresResource, fmt: str | None, folder: Path, server_csv: bool = False) -> Callable[[], None]:
    plan = plan_request("users", fmt or "parquet", {"order": "none"})

    def run() -> None:
        reading = Reading.of(plan, cap=postgres.max_streams)  # as the extract op decides it
        with postgres.snapshot_stream(plan, "decode-floor", reading, server_csv=server_csv) as snapshot:
            if snapshot.copies:
                write_server_csv(snapshot.copies, plan, folder / "users.csv", lambda stream: lambda rows: None)
                return
            if fmt is not None:  # the extract op's own writing
                sink_streams(snapshot.readers, plan, folder / f"users.{fmt}", lambda stream: lambda rows: None)
                return
            source = Interleaved(snapshot.readers)
            try:
                rows = sum(batch.num_rows for batch in source)
                assert rows == snapshot.count, (rows, snapshot.count)
            finally:
                source.close()

    return run


def _server_copy(url: str, statement: str, fmt: str) -> Callable[[], None]:
    def run() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(pgsql.SQL("COPY ({}) TO '/dev/null' (FORMAT {})").format(pgsql.SQL(statement), pgsql.SQL(fmt)))

    return run


def _adbc(url: str, statement: str) -> Callable[[], None]:
    def run() -> None:
        import adbc_driver_postgresql.dbapi as adbc

        with adbc.connect(url) as conn, conn.cursor() as cursor:
            cursor.execute(statement)
            for _ in cursor.fetch_record_batch():
                pass

    return run


def _psycopg_text_copy(url: str, statement: str) -> Callable[[], None]:
    def run() -> None:
        copy_out = pgsql.SQL("COPY ({}) TO STDOUT (FORMAT csv)").format(pgsql.SQL(statement))
        with psycopg.connect(url) as conn, conn.cursor().copy(copy_out) as copy:
            for _ in copy:
                pass

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    url = local_database_url()
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT count(*) FROM users").fetchone()[0] != args.rows:
            seed(conn, args.rows, ("users",))
    postgres, one_stream = PostgresResource(url=url), PostgresResource(url=url, max_streams=1)
    plan = plan_request("users", "parquet", {"order": "none"})
    with postgres._snapshot(plan, "decode-floor") as (conn, _):  # the columns as the export reads them
        columns = postgres._declared(conn, plan)
    statement = sql.select_statement(plan, None, pg_types.reads(columns))  # registry identifiers only
    csv_statement = sql.csv_statement(plan, {c.name: c.csv_text() for c in columns})
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as folder:
        parts = {
            "server, binary COPY to /dev/null": _server_copy(url, statement, "binary"),
            "server, csv COPY to /dev/null": _server_copy(url, statement, "csv"),
            "server, export's csv text to /dev/null": _server_copy(url, csv_statement, "csv"),
            "DuckDB, 1 stream": _export(one_stream, None, Path(folder)),
            f"DuckDB, {cores} cores' streams": _export(postgres, None, Path(folder)),
            "ADBC, 1 stream (the previous reader)": _adbc(url, statement),
            "+ Polars → parquet (zstd)": _export(postgres, "parquet", Path(folder)),
            "+ Polars → csv": _export(postgres, "csv", Path(folder)),
            "server CSV → file (asyncpg), streams": _export(postgres, "csv", Path(folder), server_csv=True),
            "psycopg text COPY, 1 stream": _psycopg_text_copy(url, statement),
        }
        print(f"{args.rows:,} users rows, {cores} cores, best of {args.repeat}")
        print(f"{'part':<40}{'wall s':>8}{'client CPU s':>14}")
        timings = {}
        for name, work in parts.items():
            timings[name] = _timed(work, args.repeat)
            print(f"{name:<40}{timings[name][0]:>8.2f}{timings[name][1]:>14.2f}", flush=True)
    server = timings["server, binary COPY to /dev/null"][0]
    decode = timings["DuckDB, 1 stream"][1]
    parquet = timings["+ Polars → parquet (zstd)"][1]
    print(f"floor of parquet in no order: ({server:.2f} server + {parquet:.2f} client) / {cores} cores "
          f"= {(server + parquet) / cores:.2f} s, of which DuckDB's decoding alone {decode:.2f} s of CPU")
    csv_server, csv_client = timings["server, export's csv text to /dev/null"][0], timings["server CSV → file (asyncpg), streams"][1]
    print(f"floor of csv in no order: ({csv_server:.2f} server + {csv_client:.2f} client) / {cores} cores "
          f"= {(csv_server + csv_client) / cores:.2f} s; psql's \\copy needs the server's plain csv: "
          f"{timings['server, csv COPY to /dev/null'][0]:.2f} s on one core")


if __name__ == "__main__":
    main()
