"""Export speed and memory, side by side with the database's own COPY, in one run.

    .venv/bin/python benchmarks/export_vs_copy.py                       # 1M rows of users
    .venv/bin/python benchmarks/export_vs_copy.py --rows 1000000 10000000
    .venv/bin/python benchmarks/export_vs_copy.py --repeat 1 --formats csv,csv.gz,csv.zst,parquet,ndjson,json,xlsx
    .venv/bin/python benchmarks/export_vs_copy.py --rows 10000000 --chunks 1,2 --repeat 3

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
The fastest of --repeat runs is kept. Whole-process times include Python start-up and the
Dagster import; the "in run" column is the job's own extract+publish time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from export_platform.tooling.embedded_postgres import local_database_url
from export_platform.planning.plan import plan_export
from export_platform.tooling.sample_data import seed
from export_platform.planning.sql import select_statement

COPY_SCRIPT = """
import sys, psycopg
url, query, path = sys.argv[1:]
with psycopg.connect(url) as conn, open(path, "wb") as out:
    with conn.cursor().copy(f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER)") as copy:
        for chunk in copy:
            out.write(chunk)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--formats", default="csv,parquet", help="comma-separated export formats, e.g. csv,xlsx,json")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "export_platform_bench")
    parser.add_argument("--s3", action="store_true", help="also publish each format to a local moto S3 server")
    parser.add_argument("--chunks", default="1", help="comma-separated chunk counts to run each format with, e.g. 1,2")
    args = parser.parse_args()

    url = local_database_url()
    env = {**os.environ, "EXPORT_PLATFORM_DATABASE_URL": url}
    s3_env = start_s3(args.out) if args.s3 else None
    args.out.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "export_platform.tooling.cli"]
    query = select_statement(plan_export("users", "csv"))
    peak_rss: dict[tuple[str, int], float] = {}

    print(f"{'rows':>11} {'method':<11}{'seconds':>9}{'in run':>9}{'x COPY':>8}{'peak RSS MB':>13}{'bytes':>15}")
    for rows in args.rows:
        with psycopg.connect(url, autocommit=True) as conn:
            seed(conn, rows, tables=("users",))
            conn.execute("VACUUM ANALYZE users")
        copy_file = args.out / "copy.csv"
        copy_seconds, rss, _ = best_of(args.repeat, [sys.executable, "-c", COPY_SCRIPT, url, query, str(copy_file)], env)
        print(f"{rows:>11,} {'copy':<11}{copy_seconds:>9.2f}{'':>9}{1:>8.2f}{rss:>13.0f}{copy_file.stat().st_size:>15,}")
        for fmt, chunks in [(f, int(c)) for f in args.formats.split(",") for c in args.chunks.split(",")]:
            target, method = args.out / f"users.{fmt}", fmt if chunks == 1 else f"{fmt} x{chunks}"
            seconds, rss, stdout = best_of(
                args.repeat, [*cli, "run", "users", "--format", fmt, "--chunks", str(chunks), "--output", str(target)], env
            )
            in_run = float(dict(p.split("=", 1) for p in stdout.split())["seconds"])
            peak_rss[(method, rows)] = rss
            print(
                f"{rows:>11,} {method:<11}{seconds:>9.2f}{in_run:>9.2f}{seconds / copy_seconds:>8.2f}"
                f"{rss:>13.0f}{target.stat().st_size:>15,}"
            )
            if s3_env:
                seconds, rss, stdout = best_of(args.repeat, [*cli, "run", "users", "--format", fmt], {**env, **s3_env})
                result = dict(p.split("=", 1) for p in stdout.split())
                print(
                    f"{rows:>11,} {fmt + '→s3':<9}{seconds:>9.2f}{float(result['seconds']):>9.2f}"
                    f"{seconds / copy_seconds:>8.2f}{rss:>13.0f}{int(result['bytes']):>15,}"
                )
    if len(args.rows) > 1:
        low, high = min(args.rows), max(args.rows)
        for method in sorted({m for m, _ in peak_rss}):
            ratio = peak_rss[(method, high)] / peak_rss[(method, low)]
            print(f"peak RSS {method} {high:,} / {low:,} rows: {ratio:.2f}")


if __name__ == "__main__":
    main()
