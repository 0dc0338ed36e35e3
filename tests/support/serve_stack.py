"""A real `export-platform serve` process on a loopback port, and a raw HTTP client for it (raw, so
that tests can send the malformed paths and headers a browser would clean up)."""

from __future__ import annotations

import dataclasses
import http.client
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from export_platform.links import PUBLIC_URL_ENV, SIGNING_KEY_ENV, Signer
from export_platform import processes
from export_platform.processes import Processes, free_port
from export_platform.resources.storage import STORAGE_URL_ENV

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
    """`dev`'s `serve` (export_platform/processes.py) over `storage_root` on `port` (default: a free
    one), with the test signing key."""
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, SIGNING_KEY_ENV: TEST_KEY, PUBLIC_URL_ENV: base, STORAGE_URL_ENV: str(storage_root),
           **(extra_env or {})}
    running = Processes()
    try:
        process = running.start(dataclasses.replace(processes.serve(env, "127.0.0.1", port), log=log))
        try:
            running.wait_ready("serve", START_TIMEOUT)
        except RuntimeError as error:
            raise AssertionError(f"{error}: {log.read_text()}") from error
        yield Server(base, port, process, Signer(TEST_KEY.encode()), env)
    finally:
        running.stop()
