"""Export speed and memory, side by side with the database's own COPY, in one run.

    .venv/bin/python benchmarks/export_vs_copy.py                       # 1M rows of users
    .venv/bin/python benchmarks/export_vs_copy.py --rows 1000000 10000000
    .venv/bin/python benchmarks/export_vs_copy.py --repeat 1 --formats csv,csv.gz,csv.zst,parquet,ndjson,json,xlsx
    .venv/bin/python benchmarks/export_vs_copy.py --rows 10000000 --chunks 1,2 --repeat 3
    .venv/bin/python benchmarks/export_vs_copy.py --rows 10000000 --peers   # make bench-peers

For each size: seeds `users` with N rows, then runs each contender as a whole process and
records wall time and that process's peak RSS (from wait4):
  - copy:    psycopg `COPY (SELECT ...) TO STDOUT WITH (FORMAT csv, HEADER)` into a file, the
             same SELECT (columns, ORDER BY) the export runs; the equivalent of psql's \\copy
  - csv, parquet, ...: `export-platform run users --format F --output FILE`, for every format
    given (names or extensions: csv_zst or csv.zst; pdf only up to its 10,000-row limit)
  - with --chunks 1,2: each format once per chunk count (`--chunks N`, N streams sharing one
    snapshot), shown as e.g. `csv x2`
  - with --s3: the same exports published to an S3-compatible server (moto, on a loopback port)
    instead of a local file, to show memory stays flat when the target is object storage
  - with --peers (needs the `bench` extra for ConnectorX: `make bench-peers`), the tools a user would
    pick instead, on the same columns: psql `\\copy (SELECT ...) TO file csv header` without and
    with the export's ORDER BY (psql from PATH, else the one pgserver ships; skipped when neither
    exists), DuckDB's postgres scanner (ATTACH, `COPY (SELECT ...) TO` parquet zstd, parquet snappy
    and csv, one thread per core), ConnectorX (`read_sql` in 2 partitions on the key, to Arrow,
    written by pyarrow as zstd Parquet), and `export-platform run --order none` for csv and
    parquet. Then the same four exports (csv and parquet, no order and key order) as requests
    served by the warm run-worker pool (daemon + workers, as `export-platform dev` runs them):
    created→COMPLETED and RUNNING→COMPLETED of the request row. Last, the goals' table in Markdown,
    ready for benchmarks/RESULTS.md: each export against its peer (parquet in no order against
    DuckDB's zstd parquet, csv in no order against `\\copy`, key order against `\\copy ... ORDER BY`).
The fastest of --repeat runs is kept. Whole-process times include Python start-up and the
Dagster import; the "in run" column is the job's own extract+publish time. Every csv and parquet
file written is read back: its columns and row count must be the table's, or the benchmark stops.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

import pgserver
import polars as pl
import psycopg
from psycopg import sql

from export_platform.planning.plan import ExportPlan, plan_export
from export_platform.planning.sql import count_statement, select_statement
from export_platform.requests.store import RequestStore
from export_platform.tooling.embedded_postgres import local_database_url
from export_platform.tooling.sample_data import seed

CLI = [sys.executable, "-m", "export_platform.tooling.cli"]

COPY_SCRIPT = """
import sys, psycopg
url, query, path = sys.argv[1:]
with psycopg.connect(url) as conn, open(path, "wb") as out:
    with conn.cursor().copy(f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER)") as copy:
        for chunk in copy:
            out.write(chunk)
"""


# DuckDB downloads an extension on first use unless told otherwise; the benchmark loads the binary
# that the `duckdb-extension-postgres-scanner` package installed, from its path, so nothing is
# fetched at run time and the extension is the one pinned in constraints.txt.
DUCKDB_SCRIPT = """
import os, sys
from pathlib import Path
import duckdb, duckdb_extension_postgres_scanner
url, query, path, options = sys.argv[1:]
literal = lambda text: "'" + text.replace("'", "''") + "'"
extension = (Path(duckdb_extension_postgres_scanner.__file__).parent / "extensions"
             / f"v{duckdb.__version__}" / "postgres_scanner.duckdb_extension")
con = duckdb.connect(config={"autoinstall_known_extensions": False, "threads": os.cpu_count()})
con.execute(f"LOAD {literal(str(extension))}")
con.execute(f"ATTACH {literal(url)} AS db (TYPE postgres, READ_ONLY)")
con.execute(f"COPY ({query}) TO {literal(path)} ({options})")
"""

# ConnectorX as its documentation shows it: the whole result in memory as Arrow, then one write.
CONNECTORX_SCRIPT = """
import sys
import connectorx, pyarrow.parquet
url, query, key, path = sys.argv[1:]
table = connectorx.read_sql(url, query, partition_on=key, partition_num=2, return_type="arrow")
pyarrow.parquet.write_table(table, path, compression="zstd")
"""


# Runs argv as its grandchild and reports that process's own peak RSS. A child forked (or
# vforked) straight from this script would start with this script's RSS in its peak; this small
# launcher is what forks it.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
sys.stderr.write(f"\\n__peak_rss_kb={usage.ru_maxrss}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measure(argv: list[str], env: dict) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MB and stdout of one process."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *argv], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed: {done.stderr}")
    peak_kb = int(done.stderr.rsplit("__peak_rss_kb=", 1)[1])
    return seconds, peak_kb / 1024, done.stdout


def best_of(repeat: int, argv: list[str], env: dict) -> tuple[float, float, str]:
    runs = [measure(argv, env) for _ in range(repeat)]
    return min(runs, key=lambda r: r[0])


def start_s3(folder: Path) -> dict[str, str]:
    """A moto S3 server in this process (it lives as long as the benchmark) and the variables
    that point the export processes at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3_env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "EXPORT_PLATFORM_STORAGE_URL": "s3://bench-exports/runs",
    }
    os.environ.update({k: v for k, v in s3_env.items() if k.startswith("AWS_")})
    boto3.client("s3").create_bucket(Bucket="bench-exports")
    return s3_env


def find_psql() -> str | None:
    """psql from PATH, as a user would run it, else the one the pgserver package ships beside its Postgres."""
    bundled = Path(pgserver.__file__).parent / "pginstall" / "bin"
    return shutil.which("psql") or shutil.which("psql", path=str(bundled))


def unordered_statement(plan: ExportPlan, relation: sql.Identifier) -> str:
    """The export's columns with no ORDER BY: what a tool that does not sort reads."""
    columns = sql.SQL(", ").join(map(sql.Identifier, plan.columns))
    return sql.SQL("SELECT {columns} FROM {relation}").format(columns=columns, relation=relation).as_string()


def authority_host_url(url: str) -> str:
    """The URL with a `?host=/socket/dir` moved, percent-encoded, into its authority: ConnectorX
    rejects a URL with an empty host (the embedded Postgres listens on a socket only); libpq takes both."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if parts.hostname or "host" not in query:
        return url
    userinfo, host = parts.netloc.rpartition("@")[0], quote(query.pop("host")[0], safe="")
    rest = "&".join(f"{key}={value}" for key, values in query.items() for value in values)
    return urlunsplit((parts.scheme, f"{userinfo}@{host}" if userinfo else host, parts.path, rest, ""))


def check_file(method: str, path: Path, plan: ExportPlan, rows: int) -> None:
    """Stops the benchmark unless the file has the export's columns and every row of the table: a
    fast wrong file is no result. Read by Polars, which keeps quoted newlines inside their field."""
    frame = pl.scan_parquet(path) if path.suffix == ".parquet" else pl.scan_csv(path, infer_schema=False)
    columns, count = frame.collect_schema().names(), frame.select(pl.len()).collect().item()
    if columns != list(plan.columns) or count != rows:
        raise SystemExit(f"{method}: {path} has {count:,} rows of {columns}; expected {rows:,} of {list(plan.columns)}")


Contender = tuple[str, list[str], Path | None, dict]  # method, argv, file written (None: S3), environment


def contenders(
    args: argparse.Namespace,
    url: str,
    plan: ExportPlan,
    env: dict,
    s3_env: dict | None,
    psql: str | None,
    order_none: bool,
) -> list[Contender]:
    """Every process to measure, the ratio's base first: psql's unordered \\copy with --peers, else
    psycopg's COPY."""
    python, out = sys.executable, args.out
    relation = plan.relation.split(".")
    unordered = unordered_statement(plan, sql.Identifier(*relation))
    copy_file = out / "copy.csv"
    listed: list[Contender] = []
    if psql:
        for method, query, name in [
            ("\\copy", unordered, "psql.csv"),
            (f"\\copy order by {', '.join(plan.order_by)}", select_statement(plan), "psql-ordered.csv"),
        ]:
            target = sql.Literal(str(out / name)).as_string()
            command = f"\\copy ({query}) TO {target} WITH (FORMAT csv, HEADER)"
            argv = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", command]
            listed.append((method, argv, out / name, env))
    listed.append(("copy", [python, "-c", COPY_SCRIPT, url, select_statement(plan), str(copy_file)], copy_file, env))
    for fmt, chunks in [(f, int(c)) for f in args.formats.split(",") for c in args.chunks.split(",")]:
        target, method = out / f"users.{fmt}", fmt if chunks == 1 else f"{fmt} x{chunks}"
        run = [*CLI, "run", "users", "--format", fmt, "--chunks", str(chunks)]
        listed.append((method, [*run, "--output", str(target)], target, env))
        if s3_env:
            listed.append((f"{method}→s3", run, None, {**env, **s3_env}))
    if order_none:
        for fmt in ("csv", "parquet"):
            target = out / f"users-order-none.{fmt}"
            run = [*CLI, "run", "users", "--format", fmt, "--order", "none", "--output", str(target)]
            listed.append((f"{fmt} order none", run, target, env))
    if args.peers:
        scan = unordered_statement(plan, sql.Identifier("db", *relation))
        for method, options, name in [
            ("duckdb parquet zstd", "FORMAT parquet, COMPRESSION zstd", "duckdb-zstd.parquet"),
            ("duckdb parquet snappy", "FORMAT parquet, COMPRESSION snappy", "duckdb-snappy.parquet"),
            ("duckdb csv", "FORMAT csv, HEADER", "duckdb.csv"),
        ]:
            listed.append((method, [python, "-c", DUCKDB_SCRIPT, url, scan, str(out / name), options], out / name, env))
        target = out / "connectorx.parquet"
        argv = [python, "-c", CONNECTORX_SCRIPT, authority_host_url(url), unordered, plan.chunk_key, str(target)]
        listed.append(("connectorx parquet zstd", argv, target, env))
    return listed


# The goals' table (issue 23): each export in `run` and as a warm request, against its peer.
GOALS = [
    ("parquet", "none", "parquet order none", "duckdb parquet zstd", 1.0),
    ("csv", "none", "csv order none", "\\copy", 1.0),
    ("csv", "key", "csv", "\\copy order by id", 1.2),
    ("parquet", "key", "parquet", "\\copy order by id", 1.2),
]


def warm_requests(url: str, repeat: int, count: int) -> dict[tuple[str, str], tuple[float, float]]:
    """The GOALS' exports as request rows served by the warm pool: best of `repeat` (created→COMPLETED,
    RUNNING→COMPLETED) each, every one checked to have written `count` rows."""
    from request_latency import _wait, warm_stack  # beside this script

    timings = {}
    with warm_stack(url), psycopg.connect(url, autocommit=True) as conn:
        for fmt, order, *_ in GOALS:
            runs = []
            for _ in range(repeat):
                (request_id,) = conn.execute(
                    "INSERT INTO export_requests (export_type, format, params, requested_by) "
                    "VALUES ('users', %s, %s, 'bench') RETURNING id", (fmt, json.dumps({"order": order}))
                ).fetchone()
                [row] = _wait(conn, [request_id])
                if row[1] != "COMPLETED" or row[2] != count:
                    raise SystemExit(f"request {fmt} order {order}: {row[1]} with {row[2]} rows, {row[7]}")
                runs.append(((row[6] - row[3]).total_seconds(), (row[6] - row[5]).total_seconds()))
            timings[(fmt, order)] = min(runs)
    return timings


def goals_table(rows: int, measured: dict, warm: dict, load: str) -> str:
    """The Markdown table for benchmarks/RESULTS.md."""
    lines = [
        f"{rows:,} `users` rows, best of the runs, load average {load}:",
        "",
        "| export | `run` s (in run) | peak RSS MB | warm request s (in run) | peer | peer s | × peer, `run` | × peer, request | goal |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for fmt, order, method, peer, goal in GOALS:
        if (method, rows) not in measured or (peer, rows) not in measured:
            continue
        seconds, in_run, rss = measured[(method, rows)]
        peer_seconds = measured[(peer, rows)][0]
        created, running = warm.get((fmt, order), (float("nan"), float("nan")))
        lines.append(
            f"| {fmt}, {'no order' if order == 'none' else 'key order'} | {seconds:.2f} ({in_run}) | {rss:.0f} | "
            f"{created:.2f} ({running:.2f}) | {peer} | {peer_seconds:.2f} | {seconds / peer_seconds:.2f} | "
            f"{created / peer_seconds:.2f} | ≤ {goal} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--formats", default="csv,parquet", help="comma-separated export formats, e.g. csv,xlsx,json")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "export_platform_bench")
    parser.add_argument("--s3", action="store_true", help="also publish each format to a local moto S3 server")
    parser.add_argument("--chunks", default="1", help="comma-separated chunk counts to run each format with, e.g. 1,2")
    parser.add_argument("--peers", action="store_true", help="also run psql \\copy, DuckDB and ConnectorX (the bench extra), "
                        "and the exports as warm-worker requests")
    parser.add_argument("--no-warm", action="store_true", help="with --peers, skip the warm-worker requests")
    args = parser.parse_args()
    if args.peers and not importlib.util.find_spec("connectorx"):
        raise SystemExit("--peers needs the bench extra: make bench-peers, or pip install -c constraints.txt -e '.[bench]'")

    url = local_database_url()
    RequestStore(url=url).migrate()  # `export-platform run` checks the request table's schema, also in a fresh database
    env = {**os.environ, "EXPORT_PLATFORM_DATABASE_URL": url}
    s3_env = start_s3(args.out) if args.s3 else None
    args.out.mkdir(parents=True, exist_ok=True)
    plan = plan_export("users", "csv")
    psql = find_psql() if args.peers else None
    if args.peers:
        if psql:
            version = subprocess.run([psql, "--version"], capture_output=True, text=True).stdout.strip()
            print(f"psql: {psql} ({version})")
        else:
            print("psql is not on PATH (nor in pgserver): no \\copy; the ratio is against psycopg's COPY")
    listed = contenders(args, url, plan, env, s3_env, psql, args.peers)
    peak_rss: dict[tuple[str, int], float] = {}
    measured: dict[tuple[str, int], tuple[float, str, float]] = {}
    tables = []
    width = max(len("method"), *(len(method) for method, *_ in listed)) + 2

    base = "\\copy" if psql else "COPY"
    print(f"{'rows':>11} {'method':<{width}}{'seconds':>9}{'in run':>9}{'x ' + base:>8}{'peak RSS MB':>13}{'bytes':>15}")
    for rows in args.rows:
        with psycopg.connect(url, autocommit=True) as conn:
            seed(conn, rows, tables=("users",))
            conn.execute("VACUUM ANALYZE users")
            count = conn.execute(count_statement(plan)).fetchone()[0]
        base_seconds = None
        load = f"{os.getloadavg()[0]:.1f}"
        for method, argv, target, run_env in listed:
            seconds, rss, stdout = best_of(args.repeat, argv, run_env)
            base_seconds = base_seconds or seconds
            # export-platform run prints rows=, bytes=, seconds=, ...; the other tools print nothing.
            result = dict(p.split("=", 1) for p in stdout.split() if "=" in p)
            in_run = f"{float(result['seconds']):.2f}" if "seconds" in result else ""
            size = target.stat().st_size if target else int(result["bytes"])
            if target and target.suffix in (".csv", ".parquet"):
                check_file(method, target, plan, count)
            peak_rss[(method, rows)] = rss
            measured[(method, rows)] = (seconds, in_run, rss)
            print(
                f"{rows:>11,} {method:<{width}}{seconds:>9.2f}{in_run:>9}{seconds / base_seconds:>8.2f}"
                f"{rss:>13.0f}{size:>15,}", flush=True
            )
        load = f"{load} → {os.getloadavg()[0]:.1f}"
        warm = warm_requests(url, args.repeat, count) if args.peers and not args.no_warm else {}
        for (fmt, order), (created, running) in warm.items():
            print(f"{rows:>11,} {'request ' + fmt + ' order ' + order:<{width}}{created:>9.2f}{running:>9.2f}", flush=True)
        if args.peers:
            tables.append(goals_table(rows, measured, warm, load))
    if len(args.rows) > 1:
        low, high = min(args.rows), max(args.rows)
        for method in sorted({m for m, _ in peak_rss}):
            ratio = peak_rss[(method, high)] / peak_rss[(method, low)]
            print(f"peak RSS {method} {high:,} / {low:,} rows: {ratio:.2f}")
    for table in tables:
        print("\n" + table)


if __name__ == "__main__":
    main()
