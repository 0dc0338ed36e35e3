"""Where an export's CPU goes, part by part, and the floor that sets on this machine's cores.

    .venv/bin/python benchmarks/decode_floor.py [--rows 10000000] [--repeat 2]

Measures, on `users` (seeded to --rows when it holds another number), the parts of
`export-platform run users --order none` one at a time, in this process (no Dagster):
  - server, binary / csv: the export's own SELECT as `COPY (...) TO '/dev/null'` inside the
    server, so no client work at all: one backend's time to produce the rows (needs a superuser,
    as the embedded Postgres's role is);
  - ADBC, 1 stream / N streams: the export's read path (`PostgresResource.snapshot_stream`, the
    snapshot, the count, the page streams) drained, every batch dropped;
  - + Polars → parquet / csv: the same, written as the extract op writes it (`sink_streams`);
  - psycopg text COPY: what any Python client reading the server's CSV pays, the rows written
    nowhere (libpq hands over one row per call).
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

from export_platform.planning import sql
from export_platform.planning.plan import plan_request
from export_platform.resources.postgres import PostgresResource
from export_platform.sinks.arrow_source import Interleaved
from export_platform.sinks.parts import sink_streams
from export_platform.tooling.embedded_postgres import local_database_url
from export_platform.tooling.sample_data import seed


def _timed(work: Callable[[], None], repeat: int) -> tuple[float, float]:
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best


def _export(postgres: PostgresResource, fmt: str | None, folder: Path) -> Callable[[], None]:
    plan = plan_request("users", fmt or "parquet", {"order": "none"})

    def run() -> None:
        with postgres.snapshot_stream(plan, "decode-floor") as snapshot:
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
    with postgres._snapshot(plan, "decode-floor") as (cursor, _):  # the columns as the export reads them
        _, as_text = postgres._declared(cursor, plan)
    statement = sql.select_statement(plan, None, as_text)  # registry identifiers only
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as folder:
        parts = {
            "server, binary COPY to /dev/null": _server_copy(url, statement, "binary"),
            "server, csv COPY to /dev/null": _server_copy(url, statement, "csv"),
            "ADBC, 1 stream": _export(one_stream, None, Path(folder)),
            f"ADBC, {cores} cores' streams": _export(postgres, None, Path(folder)),
            "+ Polars → parquet (zstd)": _export(postgres, "parquet", Path(folder)),
            "+ Polars → csv": _export(postgres, "csv", Path(folder)),
            "psycopg text COPY, 1 stream": _psycopg_text_copy(url, statement),
        }
        print(f"{args.rows:,} users rows, {cores} cores, best of {args.repeat}")
        print(f"{'part':<36}{'wall s':>8}{'client CPU s':>14}")
        timings = {}
        for name, work in parts.items():
            timings[name] = _timed(work, args.repeat)
            print(f"{name:<36}{timings[name][0]:>8.2f}{timings[name][1]:>14.2f}", flush=True)
    server = timings["server, binary COPY to /dev/null"][0]
    decode = timings["ADBC, 1 stream"][1]
    parquet = timings["+ Polars → parquet (zstd)"][1]
    print(f"floor of parquet in no order: ({server:.2f} server + {parquet:.2f} client) / {cores} cores "
          f"= {(server + parquet) / cores:.2f} s, of which the driver's decoding alone {decode:.2f} s of CPU")


if __name__ == "__main__":
    main()
