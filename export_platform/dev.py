"""`export-platform dev`: the Dagster webserver and daemon on this project's instance.

They run as child processes of one command, which prints the UI's address once it answers, keeps
the terminal for warnings and errors (Dagster's INFO lines, such as a skipped sensor tick every
2 s, are left out unless `--log-level info`), and stops them all on Ctrl-C or SIGTERM. Another
long-running service is one more `Services.start` call.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

CODE_LOCATION = "export_platform.definitions"
STOP_SECONDS = 30
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def executable(name: str) -> str:
    """A console script of the environment this Python runs in, found beside sys.executable, so
    that `.venv/bin/export-platform dev` works without the venv on PATH."""
    return str(Path(sys.executable).with_name(name))


class Stopped(Exception):
    """SIGTERM or SIGINT reached `dev`."""


def _raise_stopped(signum, frame) -> None:
    raise Stopped(signal.Signals(signum).name)


class Services:
    """Child processes started together and stopped together."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str]) -> None:
        self.processes[name] = subprocess.Popen(argv, env=self.env)

    def exited(self) -> tuple[str, int] | None:
        """The first service that has ended, with its exit code."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                return name, process.returncode
        return None

    def stop(self) -> None:
        """SIGTERM to each (they shut down their code servers), then SIGKILL to what is left."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + STOP_SECONDS
        for process in self.processes.values():
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/server_info", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def browser_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{shown}:{port}"


def run_dev(host: str, port: int, log_level: str) -> int:
    from .instance import prepare_dagster_home
    from .resources.requests import RequestStore

    env = {**os.environ, **prepare_dagster_home()}
    RequestStore().migrate()
    url = browser_url(host, port)
    services = Services(env)
    for s in STOP_SIGNALS:
        signal.signal(s, _raise_stopped)
    try:
        services.start("webserver", [
            executable("dagster-webserver"), "-m", CODE_LOCATION, "-h", host, "-p", str(port),
            "--dagster-log-level", log_level, "--code-server-log-level", log_level,
        ])
        services.start("daemon", [
            executable("dagster-daemon"), "run", "-m", CODE_LOCATION,
            "--log-level", log_level, "--code-server-log-level", log_level,
        ])
        print(f"starting the Dagster webserver and daemon (DAGSTER_HOME={env['DAGSTER_HOME']}) ...", flush=True)
        while not _answers(url):
            if ended := services.exited():
                print(f"error: the {ended[0]} exited with code {ended[1]} before the UI answered", file=sys.stderr)
                return 1
            time.sleep(0.5)
        print(f"\nDagster UI: {url}    (Ctrl-C stops it)\n", flush=True)
        while (ended := services.exited()) is None:
            time.sleep(1)
        print(f"error: the {ended[0]} exited with code {ended[1]}; stopping the others", file=sys.stderr)
        return 1
    except Stopped:
        return 0
    finally:
        for s in STOP_SIGNALS:  # a second Ctrl-C must not leave the services orphaned halfway
            signal.signal(s, signal.SIG_IGN)
        services.stop()
        print("stopped the webserver and the daemon; the database keeps running (export-platform db stop)",
              flush=True)
