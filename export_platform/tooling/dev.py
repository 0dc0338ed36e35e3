"""`export-platform dev`: the warm run-worker pool, the daemon and the webserver on this project's
instance, as children of this command, which prints the UI's address once it answers and stops
them all on Ctrl-C or SIGTERM.

Not `dagster dev`: it starts Dagster's own daemon entry point, whose sensor loop sleeps 5 s
(export_platform/tooling/daemon.py shortens it), and no run workers. The terminal keeps the webserver's
warnings and errors (Dagster's INFO lines are left out unless `--log-level info`); the daemon and
the pool log to files in DAGSTER_HOME. Another long-running service is one more `Services.start`.
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
STOP_SECONDS = 90  # `dagster dev` itself gives its processes 60 s
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """SIGTERM or SIGINT reached `dev`."""


def _raise_stopped(signum, frame) -> None:
    raise Stopped(signal.Signals(signum).name)


class Services:
    """Child processes started together and stopped together."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], cwd: Path | None = None, log: Path | None = None) -> None:
        """Start `argv`; its output goes to the terminal, or appended to `log`."""
        if log is None:
            self.processes[name] = subprocess.Popen(argv, env=self.env, cwd=cwd)
            return
        with log.open("ab") as out:
            self.processes[name] = subprocess.Popen(argv, env=self.env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)

    def exited(self) -> tuple[str, int] | None:
        """The first service that has ended, with its exit code."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                return name, process.returncode
        return None

    def stop(self) -> None:
        """SIGTERM to each (each then stops its own code server), then SIGKILL to what is left."""
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


def _serve_env(env: dict[str, str], host: str, port: int) -> None:
    """`dev --serve`: a development signing key kept under the platform home (production sets
    EXPORT_PLATFORM_SIGNING_KEY itself), and the public URL the runs then put on the rows."""
    from ..delivery.links import PUBLIC_URL_ENV, SIGNING_KEY_ENV, dev_key_file, dev_signing_key

    env.setdefault(SIGNING_KEY_ENV, dev_signing_key())
    env.setdefault(PUBLIC_URL_ENV, browser_url(host, port))
    print(f"serve: {env[PUBLIC_URL_ENV]} (in other shells: export {PUBLIC_URL_ENV}={env[PUBLIC_URL_ENV]} "
          f"{SIGNING_KEY_ENV}=$(cat {dev_key_file()}))", flush=True)


def run_dev(host: str, port: int, log_level: str, serve_port: int | None = None) -> int:
    from .embedded_postgres import HOME_ENV, local_database_url, platform_home
    from .instance import prepare_dagster_home
    from ..resources.requests import RequestStore

    # The embedded Postgres unless one is configured; `env` hands the choice to every service.
    app_url = local_database_url()
    # Absolute: the services run in DAGSTER_HOME, and the default home is relative to the cwd.
    env = {**os.environ, HOME_ENV: str(platform_home()), **prepare_dagster_home(app_url=app_url)}
    RequestStore(url=app_url).migrate()
    url = browser_url(host, port)
    services = Services(env)
    for s in STOP_SIGNALS:
        signal.signal(s, _raise_stopped)
    try:
        if serve_port is not None:  # first: the runs `dagster dev` starts need its URL and key
            _serve_env(env, host, serve_port)
            services.start("serve", [
                sys.executable, "-m", "export_platform.tooling.cli", "serve", "--host", host, "--port", str(serve_port),
                "--exit-with-parent", str(os.getpid()),
            ])
        # The Python this command runs on, so no venv needs to be on PATH; in DAGSTER_HOME, since
        # Dagster warns that a dagster.yaml in its working folder (the project's) "will not be used".
        home = Path(env["DAGSTER_HOME"])
        services.start("workers", [sys.executable, "-m", "export_platform.workers"], cwd=home, log=home / "workers.log")
        services.start("dagster-daemon", [
            sys.executable, "-m", "export_platform.tooling.daemon", "run", "-m", CODE_LOCATION, "--log-level", log_level,
        ], cwd=home, log=home / "daemon.log")
        services.start("dagster-webserver", [
            sys.executable, "-m", "dagster_webserver", "-m", CODE_LOCATION, "-h", host, "-p", str(port),
            "--dagster-log-level", log_level, "--code-server-log-level", log_level,
        ], cwd=home)
        print(f"starting the Dagster webserver, daemon and run workers (DAGSTER_HOME={home}; their logs: "
              f"{home / 'daemon.log'}, {home / 'workers.log'}) ...", flush=True)
        while not _answers(url):
            if ended := services.exited():
                print(f"error: `{ended[0]}` exited with code {ended[1]} before the UI answered", file=sys.stderr)
                return 1
            time.sleep(0.5)
        print(f"\nDagster UI: {url}    (Ctrl-C stops it)\n", flush=True)
        while (ended := services.exited()) is None:
            time.sleep(1)
        print(f"error: `{ended[0]}` exited with code {ended[1]}", file=sys.stderr)
        return 1
    except Stopped:
        return 0
    finally:
        for s in STOP_SIGNALS:  # a second Ctrl-C must not leave the services orphaned halfway
            signal.signal(s, signal.SIG_IGN)
        services.stop()
        print("stopped the webserver, the daemon and the run workers; the database keeps running (export-platform db stop)",
              flush=True)
