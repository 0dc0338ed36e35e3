"""`export-platform dev` as a user starts it, for tests: the installed console script, a clean
environment without the venv on PATH, its own databases, folders and port."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
from sqlalchemy.engine import make_url

from export_platform.resources.database_url import DATABASE_URL_ENV
from export_platform.home import HOME_ENV
from export_platform.tooling.embedded_postgres import ensure_database
from export_platform.tooling.instance import DAGSTER_DATABASE_URL_ENV
from export_platform.processes import free_port
from export_platform.resources.storage import STORAGE_URL_ENV

SCRIPT = str(Path(sys.executable).with_name("export-platform"))
STARTUP_SECONDS = 180


def database_url_beside(url: str, name: str) -> str:
    ensure_database(url, name)
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def clean_env(server_url: str, tmp: Path, prefix: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp),
        HOME_ENV: str(tmp / "platform"),
        DATABASE_URL_ENV: database_url_beside(server_url, f"{prefix}_app"),
        DAGSTER_DATABASE_URL_ENV: database_url_beside(server_url, f"{prefix}_dagster"),
        STORAGE_URL_ENV: str(tmp / "exports"),
    }


def get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()
    except (urllib.error.URLError, OSError):
        return None


@dataclass
class Dev:
    process: subprocess.Popen
    url: str
    serve_url: str
    out: Path
    err: Path
    children: list[psutil.Process]

    def stop(self) -> list[psutil.Process]:
        """SIGTERM, as a service manager sends it; the processes still alive after that."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=120)
        _, alive = psutil.wait_procs(self.children, timeout=60)
        return alive


@contextlib.contextmanager
def running_dev(env: dict[str, str], tmp: Path) -> Iterator[Dev]:
    """Start `dev` and wait until the UI answers and dev has printed its address; whatever happens,
    end every process it started."""
    port, serve_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    out, err = tmp / "dev.out", tmp / "dev.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        # Its own session, so that a failed test can still end every process it started.
        process = subprocess.Popen([SCRIPT, "dev", "--port", str(port), "--serve", str(serve_port)], env=env, cwd=tmp,
                                   stdout=stdout, stderr=stderr, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        # Ready when dev itself says so: the UI answers before dev's own check prints the address.
        while get(f"{url}/server_info") is None or "Dagster UI:" not in out.read_text():
            assert process.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "the UI never answered"
            time.sleep(0.5)
        yield Dev(process, url, f"http://127.0.0.1:{serve_port}", out, err, psutil.Process(process.pid).children(recursive=True))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
