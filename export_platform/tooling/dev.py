"""`export-platform dev`: everything a person needs to try the platform on one machine, as
children of this command, which prints the UI's address once it answers and stops them all on
Ctrl-C or SIGTERM:

- one code server (`dagster code-server start`) that the webserver and the daemon share through
  a workspace file, so the code location is loaded once and stays loaded;
- the Dagster daemon (its sensor loop shortened, export_platform/tooling/daemon.py) and webserver;
- the warm run workers, as many as this machine has cores (at most dagster.yaml's `workers`);
- `serve` (signed downloads and status pages), whose address and signing key the code location
  gets too, so that finished requests carry a `download_url` and the run page a download link.

Not `dagster dev`: its daemon's sensor loop sleeps 5 s, and it starts no run workers. Given a module
(`-m`), the webserver and the daemon would each start a code server of their own, and the daemon
replaces its code server every minute (`RELOAD_WORKSPACE_INTERVAL`, dagster/_daemon/controller.py),
the old one exiting with "No heartbeat received in 20 seconds, shutting down": one more import of
the code location a minute, on a 2-core machine. The terminal keeps the services' warnings and
errors (`--log-level info` shows Dagster's INFO lines); the daemon and the pool log to files in
DAGSTER_HOME. Another long-running service is one more `Services.start`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import yaml

CODE_LOCATION = "export_platform.definitions"
STOP_SECONDS = 90  # `dagster dev` itself gives its processes 60 s
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# dagster.yaml's run_launcher `workers`: what a deployment keeps warm. `dev` keeps one per core up to it.
MAX_DEV_WORKERS = 5
# A warm worker holds Dagster, Polars and the code location: about 270 MB before its first export.
WORKER_MB = 400
CODE_SERVER_START_SECONDS = 180


class Stopped(Exception):
    """SIGTERM or SIGINT reached `dev`: a signal that ends it with 0, not an error, so outside
    errors.ExportPlatformError."""


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
        """SIGTERM to each (each then stops its own children), then SIGKILL to what is left."""
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


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{shown}:{port}"


def dev_workers() -> int:
    """Warm run workers for this machine: one per core, as many as its free memory holds, at most
    what a deployment keeps (runs beyond them start a process each, as without the pool)."""
    by_memory = psutil.virtual_memory().available // (WORKER_MB * 2**20)
    return max(1, min(MAX_DEV_WORKERS, os.cpu_count() or 1, by_memory))


def _serve_env(env: dict[str, str], host: str, port: int) -> None:
    """A development signing key kept under the platform home (production sets
    EXPORT_PLATFORM_SIGNING_KEY itself), and the public URL the runs then put on the rows."""
    from ..links import PUBLIC_URL_ENV, SIGNING_KEY_ENV, dev_signing_key

    env.setdefault(SIGNING_KEY_ENV, dev_signing_key())
    env.setdefault(PUBLIC_URL_ENV, browser_url(host, port))


def _workspace(home: Path, port: int) -> Path:
    """The workspace file that points the webserver and the daemon at the one code server."""
    path = home / "workspace.yaml"
    server = {"host": "127.0.0.1", "port": port, "location_name": CODE_LOCATION}
    path.write_text(yaml.safe_dump({"load_from": [{"grpc_server": server}]}))
    return path


def _wait_for(services: Services, name: str, ready, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if ended := services.exited():
            raise RuntimeError(f"`{ended[0]}` exited with code {ended[1]} before {name} was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} was not ready after {seconds:.0f} s")
        time.sleep(0.5)


def run_dev(host: str, port: int, log_level: str, serve_port: int | None = 8080, workers: int | None = None) -> int:
    from ..home import HOME_ENV, platform_home
    from .embedded_postgres import local_database_url
    from .instance import prepare_dagster_home
    from ..requests.store import RequestStore

    # The embedded Postgres unless one is configured; `env` hands the choice to every service.
    app_url = local_database_url()
    # Absolute: the services run in DAGSTER_HOME, and the default home is relative to the cwd.
    env = {**os.environ, HOME_ENV: str(platform_home()), **prepare_dagster_home(app_url=app_url)}
    RequestStore(url=app_url).migrate()
    url = browser_url(host, port)
    workers = workers or dev_workers()
    services = Services(env)
    for s in STOP_SIGNALS:
        signal.signal(s, _raise_stopped)
    try:
        if serve_port is not None:  # first: every service that runs exports needs its URL and key
            _serve_env(env, host, serve_port)
            services.start("serve", [
                sys.executable, "-m", "export_platform.tooling.cli", "serve", "--host", host, "--port", str(serve_port),
                "--log-level", log_level, "--exit-with-parent", str(os.getpid()),
            ])
        # The Python this command runs on, so no venv needs to be on PATH; in DAGSTER_HOME, since
        # Dagster warns that a dagster.yaml in its working folder (the project's) "will not be used".
        home = Path(env["DAGSTER_HOME"])
        services.start("workers", [sys.executable, "-m", "export_platform.workers", "--count", str(workers)],
                       cwd=home, log=home / "workers.log")
        code_port = _free_port()
        services.start("code-server", [
            sys.executable, "-m", "dagster", "code-server", "start", "-m", CODE_LOCATION, "--location-name", CODE_LOCATION,
            "-h", "127.0.0.1", "-p", str(code_port), "--log-level", log_level,
        ], cwd=home)
        print(f"starting the code server, the Dagster webserver and daemon, {workers} run worker(s)"
              + (f" and serve ({env['EXPORT_PLATFORM_PUBLIC_URL']})" if serve_port is not None else "")
              + f"; DAGSTER_HOME={home}, logs: {home / 'daemon.log'}, {home / 'workers.log'} ...", flush=True)
        # It listens once the code is loaded: the webserver and daemon then find it at their first look.
        _wait_for(services, "the code server", lambda: _listening(code_port), CODE_SERVER_START_SECONDS)
        workspace = _workspace(home, code_port)
        services.start("dagster-daemon", [
            sys.executable, "-m", "export_platform.tooling.daemon", "run", "-w", str(workspace), "--log-level", log_level,
        ], cwd=home, log=home / "daemon.log")
        services.start("dagster-webserver", [
            sys.executable, "-m", "dagster_webserver", "-w", str(workspace), "-h", host, "-p", str(port),
            "--dagster-log-level", log_level,
        ], cwd=home)
        _wait_for(services, "the UI", lambda: _answers(url), CODE_SERVER_START_SECONDS)
        print(f"\nDagster UI: {url}    (Ctrl-C stops it)\n", flush=True)
        while (ended := services.exited()) is None:
            time.sleep(1)
        print(f"error: `{ended[0]}` exited with code {ended[1]}", file=sys.stderr)
        return 1
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Stopped:
        return 0
    finally:
        for s in STOP_SIGNALS:  # a second Ctrl-C must not leave the services orphaned halfway
            signal.signal(s, signal.SIG_IGN)
        services.stop()
        print(f"stopped {', '.join(services.processes) or 'nothing'}; the database keeps running (export-platform db stop)",
              flush=True)
