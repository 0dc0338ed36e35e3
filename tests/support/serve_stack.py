"""A real `export-platform serve` process on a loopback port, and a raw HTTP client for it (raw, so
that tests can send the malformed paths and headers a browser would clean up)."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from export_platform.links import PUBLIC_URL_ENV, SIGNING_KEY_ENV, Signer
from export_platform.resources.storage import STORAGE_URL_ENV

from .ports import free_port

TEST_KEY = "test-signing-key-not-for-production"
START_TIMEOUT = 60


@dataclass
class Server:
    base: str
    port: int
    process: subprocess.Popen
    signer: Signer
    env: dict[str, str]

    def get(self, target: str, method: str = "GET", headers: dict[str, str] | None = None):
        """(status, headers with lower-case names, body) of one request; `target` goes out verbatim."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.putrequest(method, target, skip_accept_encoding=True)
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            conn.endheaders()
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()


@contextmanager
def serve_process(
    storage_root: Path, log: Path, extra_env: dict[str, str] | None = None, port: int | None = None
) -> Iterator[Server]:
    """`serve` over `storage_root` on `port` (default: a free one), with the test signing key."""
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, SIGNING_KEY_ENV: TEST_KEY, PUBLIC_URL_ENV: base, STORAGE_URL_ENV: str(storage_root),
           **(extra_env or {})}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "export_platform.tooling.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, f"serve exited: {log.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"serve did not start: {log.read_text()}"
                time.sleep(0.1)
        yield Server(base, port, process, Signer(TEST_KEY.encode()), env)
    finally:
        process.terminate()
        process.wait(timeout=30)
