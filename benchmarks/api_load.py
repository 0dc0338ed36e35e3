"""Load on the HTTP API: POST /api/v1/exports at a fixed rate against a real `serve` on loopback.

    .venv/bin/python benchmarks/api_load.py [--rate 200] [--seconds 10] [--repeat 2] [--connections 32]

Starts `export-platform serve` on a throwaway database beside the configured or embedded Postgres
(no daemon: the rows stay PENDING, so only the API is measured), creates an API key for
alice@example.com, and sends `rate` × `seconds` requests open-loop: request i is due at
start + i / rate whatever the earlier ones are doing, and its latency counts from that moment
(queueing included), over `connections` keep-alive connections. Then it checks that every request
is exactly one row (202, distinct ids, one row per idempotency key, the key owning it), and that a
replay of a tenth of them with the same idempotency keys adds none.

Side by side, the same requests at the same rate inserted as an application would without the API:
plain SQL INSERTs, and the Python client (`ExportClient.request`: the planner's check, then the
INSERT). Latencies in milliseconds: p50, p95, p99, max.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import psutil
import psycopg
from psycopg import sql

from export_platform import processes
from export_platform.requests import api_keys
from export_platform.requests.client import ExportClient
from export_platform.requests.store import RequestStore
from export_platform.tooling.embedded_postgres import ensure_database, local_database_url
from psycopg.conninfo import conninfo_to_dict, make_conninfo

BENCH_DATABASE = "api_load_bench"
USER = "alice@example.com"


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def body(run: str, i: int) -> dict:
    day = 1 + i % 28
    return {"export_type": "ledger_postings", "format": "csv",
            "filters": {"from_posting_date": f"2023-02-{day:02d}", "to_posting_date": f"2023-02-{day:02d}"},
            "columns": ["id", "amount", "memo"], "idempotency_key": f"{run}-{i}"}


class Connection:
    """One keep-alive HTTP/1.1 connection, enough of it to POST JSON and read the answer."""

    def __init__(self, port: int, token: str):
        self.port, self.token = port, token
        self.reader = self.writer = None

    async def post(self, payload: bytes) -> tuple[int, dict]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(
            b"POST /api/v1/exports HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {self.token}\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload
        )
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), json.loads(await self.reader.readexactly(length))


async def load(port: int, token: str, payloads: list[bytes], rate: float, connections: int) -> list[tuple]:
    """(latency s, status, answer) per request, in order."""
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(Connection(port, token))
    start = time.perf_counter() + 0.5
    results: list[tuple] = [None] * len(payloads)  # type: ignore[list-item]

    async def one(i: int) -> None:
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        conn = await pool.get()
        try:
            status, answer = await conn.post(payloads[i])
        finally:
            pool.put_nowait(conn)
        results[i] = (time.perf_counter() - due, status, answer)

    await asyncio.gather(*(one(i) for i in range(len(payloads))))
    for _ in range(connections):
        conn = pool.get_nowait()
        if conn.writer is not None:
            conn.writer.close()
    return results


def paced(count: int, rate: float, send) -> list[float]:
    """The peers: the same schedule, one call at a time (each takes ~1 ms), latency from its due time."""
    start, latencies = time.perf_counter() + 0.2, []
    for i in range(count):
        due = start + i / rate
        time.sleep(max(0.0, due - time.perf_counter()))
        send(i)
        latencies.append(time.perf_counter() - due)
    return latencies


def start_serve(url: str, port: int, tmp: Path) -> processes.Processes:
    """`dev`'s `serve` (export_platform/processes.py), logging to tmp/serve.log."""
    env = {**os.environ, "EXPORT_PLATFORM_DATABASE_URL": url, "EXPORT_PLATFORM_SIGNING_KEY": secrets.token_urlsafe(32),
           "EXPORT_PLATFORM_PUBLIC_URL": f"http://127.0.0.1:{port}", "EXPORT_PLATFORM_STORAGE_URL": str(tmp / "exports")}
    running = processes.Processes()
    running.start(dataclasses.replace(processes.serve(env, "127.0.0.1", port), log=tmp / "serve.log"))
    try:
        running.wait_ready("serve", 60)
    except RuntimeError as error:
        running.stop()
        raise SystemExit(f"serve did not start ({error}): {(tmp / 'serve.log').read_text()}") from error
    return running


def check_rows(url: str, key_id: str, run: str, answers: list[tuple]) -> None:
    bad = [(s, a) for _, s, a in answers if s != 202]
    if bad:
        raise SystemExit(f"{len(bad)} requests were not accepted, e.g. {bad[0]}")
    ids = [a["id"] for _, _, a in answers]
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT r.id, r.idempotency_key, r.requested_by FROM export_requests r JOIN export_api_requests o "
            "ON o.request_id = r.id WHERE o.key_id = %s AND r.idempotency_key LIKE %s",
            (key_id, f"%:{run}-%"),
        ).fetchall()
    keys = [r[1].rsplit(":", 1)[1] for r in rows]
    if sorted(r[0] for r in rows) != sorted(ids) or len(set(ids)) != len(ids) or len(set(keys)) != len(keys):
        raise SystemExit(f"{len(answers)} requests, {len(set(ids))} ids, {len(rows)} rows: not one row each")
    if any(r[2] != USER for r in rows):
        raise SystemExit("a row has another requested_by")


def summary(name: str, latencies: list[float]) -> str:
    ms = [1000 * x for x in latencies]
    return (f"{name:<28}{len(ms):>7}{statistics.median(ms):>9.1f}{percentile(ms, 95):>9.1f}{percentile(ms, 99):>9.1f}"
            f"{max(ms):>9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200, help="requests a second (default 200)")
    parser.add_argument("--seconds", type=float, default=10, help="for this long (default 10)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each (default 2; report the best)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections (default 32)")
    parser.add_argument("--port", type=int, default=0, help="serve's port (default: a free one)")
    args = parser.parse_args()
    count = int(args.rate * args.seconds)

    server_url = local_database_url()
    ensure_database(server_url, BENCH_DATABASE)
    url = make_conninfo(**{**conninfo_to_dict(server_url), "dbname": BENCH_DATABASE})
    store = RequestStore(url=url)
    store.migrate()
    key, statement = api_keys.create(f"bench-{secrets.token_hex(4)}", USER, rate_per_minute=1_000_000)
    store.run(statement)
    port = args.port or __import__("socket").create_server(("127.0.0.1", 0)).getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="export_platform_api_load_"))
    serve = start_serve(url, port, tmp)
    served = psutil.Process(serve["serve"].pid)
    client = ExportClient(url)
    # Warm each path first (the planner's first call imports Polars): the runs measure a steady state.
    asyncio.run(load(port, key.token, [json.dumps(body("warm", i)).encode() for i in range(50)], 50, 4))
    for i in range(20):
        b = body("warm-client", i)
        client.request(b["export_type"], b["format"], filters=b["filters"], columns=b["columns"], requested_by=USER)
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; load average {os.getloadavg()[0]:.1f} (1 min) on "
          f"{os.cpu_count()} cores; {count} requests at {args.rate:g}/s, {args.connections} connections")
    print(f"{'':<28}{'n':>7}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    try:
        for repeat in range(args.repeat):
            run = f"r{time.time_ns()}"
            payloads = [json.dumps(body(run, i)).encode() for i in range(count)]
            cpu = served.cpu_times()
            answers = asyncio.run(load(port, key.token, payloads, args.rate, args.connections))
            cpu_after = served.cpu_times()
            check_rows(url, key.key_id, run, answers)
            replayed = asyncio.run(load(port, key.token, payloads[:: 10], args.rate, args.connections))
            if [a["id"] for _, _, a in replayed] != [a["id"] for _, _, a in answers[:: 10]]:
                raise SystemExit("a replayed idempotency key made another request")
            check_rows(url, key.key_id, run, answers)
            serve_cpu = (cpu_after.user + cpu_after.system) - (cpu.user + cpu.system)
            print(summary(f"API POST, run {repeat + 1}", [a[0] for a in answers])
                  + f"   one row each; serve CPU {serve_cpu:.1f} s, RSS {served.memory_info().rss / 2**20:.0f} MiB")

            with psycopg.connect(url, autocommit=True) as conn:
                insert = sql.SQL(
                    "INSERT INTO export_requests (export_type, format, params, requested_by, idempotency_key) "
                    "VALUES (%s, %s, %s, %s, %s) RETURNING id")

                def sql_insert(i: int) -> None:
                    b = body(f"sql-{run}", i)
                    params = json.dumps({"filters": b["filters"], "columns": b["columns"]})
                    conn.execute(insert, (b["export_type"], b["format"], params, USER, b["idempotency_key"])).fetchone()

                print(summary(f"SQL INSERT, run {repeat + 1}", paced(count, args.rate, sql_insert)))

            def client_request(i: int) -> None:
                b = body(f"client-{run}", i)
                client.request(b["export_type"], b["format"], filters=b["filters"], columns=b["columns"],
                               requested_by=USER, idempotency_key=b["idempotency_key"])

            print(summary(f"ExportClient.request, run {repeat + 1}", paced(count, args.rate, client_request)))
    finally:
        serve.stop()
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(BENCH_DATABASE)))


if __name__ == "__main__":
    main()
