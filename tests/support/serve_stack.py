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
from export_platform.processes import ProcessSpec, Processes, free_port
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


def serve_env(storage_root: Path, port: int, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, SIGNING_KEY_ENV: TEST_KEY, PUBLIC_URL_ENV: f"http://127.0.0.1:{port}",
            STORAGE_URL_ENV: str(storage_root), **(extra_env or {})}


def serve_spec(env: dict[str, str], port: int, log: Path) -> ProcessSpec:
    return dataclasses.replace(processes.serve(env, "127.0.0.1", port), log=log)


@contextmanager
def serve_process(
    storage_root: Path, log: Path, extra_env: dict[str, str] | None = None, port: int | None = None
) -> Iterator[Server]:
    """`dev`'s `serve` (export_platform/processes.py) over `storage_root` on `port` (default: a free
    one), with the test signing key."""
    port = port or free_port()
    env = serve_env(storage_root, port, extra_env)
    running = Processes()
    try:
        process = running.start(serve_spec(env, port, log))
        try:
            running.wait_ready("serve", START_TIMEOUT)
        except RuntimeError as error:
            raise AssertionError(f"{error}: {log.read_text()}") from error
        yield Server(env[PUBLIC_URL_ENV], port, process, Signer(TEST_KEY.encode()), env)
    finally:
        running.stop()
