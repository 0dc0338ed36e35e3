"""Peak RSS of `export-platform serve` while many loopback clients download one large export.

    .venv/bin/python benchmarks/serve_downloads.py [--gib 1] [--clients 20]

Places a file of --gib GiB (random bytes: serve never looks inside) under a throwaway storage
root as a published export, starts `serve` on a free loopback port (request table on the
configured Postgres, else a throwaway embedded one), then --clients threads download it at once through one signed
link, each checking the sha256 of what it read. RSS of the server process is sampled every 20 ms.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.serve_stack import serve_process  # noqa: E402 - the tests' way of starting it

from export_platform.links import file_url  # noqa: E402
from export_platform.resources.database_url import DATABASE_URL_ENV  # noqa: E402
from export_platform.tooling.embedded_postgres import start_embedded  # noqa: E402

KEY = "requests/bench/users-20261202T000000Z-0badcafe.csv"
MIB = 1 << 20


def write_file(path: Path, gib: float) -> str:
    digest = hashlib.sha256()
    block = os.urandom(16 * MIB)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for _ in range(int(gib * 1024 / 16)):
            f.write(block)
            digest.update(block)
    return digest.hexdigest()


def download(port: int, target: str, results: list, index: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("GET", target)
    response = conn.getresponse()
    digest, size = hashlib.sha256(), 0
    while chunk := response.read(MIB):
        digest.update(chunk)
        size += len(chunk)
    results[index] = (response.status, size, digest.hexdigest())
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--clients", type=int, default=20)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="export_platform_serve_"))
    if not os.environ.get(DATABASE_URL_ENV):  # pgserver stops and deletes it when this process exits
        pgdata = Path(tempfile.mkdtemp(prefix="export_platform_serve_pgdata_"))
        os.environ[DATABASE_URL_ENV] = start_embedded(pgdata, cleanup_mode="delete")
    try:
        root = tmp / "exports"
        expected = write_file(root / KEY, args.gib)
        size = (root / KEY).stat().st_size
        with serve_process(root, tmp / "serve.log") as server:
            process = psutil.Process(server.process.pid)
            target = file_url("", server.signer, KEY, 3600)
            idle = process.memory_info().rss
            peak, sampling = [idle], True

            def sample() -> None:
                while sampling:
                    peak[0] = max(peak[0], process.memory_info().rss)
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample)
            sampler.start()
            started = time.monotonic()
            server.get(target, method="HEAD")  # the first request computes the ETag (sha256)
            etag_seconds = time.monotonic() - started
            results: list = [None] * args.clients
            clients = [threading.Thread(target=download, args=(server.port, target, results, i)) for i in range(args.clients)]
            started = time.monotonic()
            for client in clients:
                client.start()
            for client in clients:
                client.join()
            seconds = time.monotonic() - started
            sampling = False
            sampler.join()
        assert all(r == (200, size, expected) for r in results), results
        total = size * args.clients
        print(f"file {size / MIB:,.0f} MiB, {args.clients} clients, all {args.clients} sha256 match")
        print(f"serve RSS idle {idle / MIB:.0f} MiB, peak {peak[0] / MIB:.0f} MiB")
        print(f"first HEAD (ETag = sha256 of the file) {etag_seconds:.1f} s")
        print(f"{total / MIB:,.0f} MiB served in {seconds:.1f} s ({total / MIB / seconds:,.0f} MiB/s)")
        print(f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / (1 << 30):.0f} GiB RAM, "
              f"Python {sys.version.split()[0]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
