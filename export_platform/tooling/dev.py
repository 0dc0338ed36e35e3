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
DAGSTER_HOME. The processes are declared in export_platform/processes.py (`stack_specs`), which the
tests' daemon stack and the benchmarks start too.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil

from .. import processes
from ..processes import browser_url

# dagster.yaml's run_launcher `workers`: what a deployment keeps warm. `dev` keeps one per core up to it.
MAX_DEV_WORKERS = 5
# A warm worker holds Dagster, Polars and the code location: about 270 MB before its first export.
WORKER_MB = 400
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """SIGTERM or SIGINT reached `dev`: a signal that ends it with 0, not an error, so outside
    errors.ExportPlatformError."""


def _raise_stopped(signum, frame) -> None:
    raise Stopped(signal.Signals(signum).name)


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


def dev_specs(env: dict[str, str], host: str, port: int, log_level: str, serve_port: int | None, workers: int,
              code_port: int) -> list[processes.ProcessSpec]:
    """What `dev` starts, in order (export_platform/processes.py's stack, with the UI and `serve`)."""
    if serve_port is not None:
        _serve_env(env, host, serve_port)
    serving = (host, serve_port) if serve_port is not None else None
    return processes.stack_specs(env, code_port, workers, log_level, ui=(host, port), serve_at=serving)


def run_dev(host: str, port: int, log_level: str, serve_port: int | None = 8080, workers: int | None = None) -> int:
    from ..home import HOME_ENV, platform_home
    from ..requests.store import RequestStore
    from .embedded_postgres import local_database_url
    from .instance import prepare_dagster_home

    # The embedded Postgres unless one is configured; `env` hands the choice to every service.
    app_url = local_database_url()
    # Absolute: the services run in DAGSTER_HOME, and the default home is relative to the cwd.
    env = {**os.environ, HOME_ENV: str(platform_home()), **prepare_dagster_home(app_url=app_url)}
    RequestStore(url=app_url).migrate()
    workers = workers or dev_workers()
    specs = dev_specs(env, host, port, log_level, serve_port, workers, processes.free_port())
    services = processes.Processes()
    for s in STOP_SIGNALS:
        signal.signal(s, _raise_stopped)
    try:
        home = Path(env["DAGSTER_HOME"])
        print(f"starting the code server, the Dagster webserver and daemon, {workers} run worker(s)"
              + (f" and serve ({env['EXPORT_PLATFORM_PUBLIC_URL']})" if serve_port is not None else "")
              + f"; DAGSTER_HOME={home}, logs: {home / 'daemon.log'}, {home / 'workers.log'} ...", flush=True)
        services.start_all(specs)
        services.wait_ready("dagster-webserver")
        print(f"\nDagster UI: {browser_url(host, port)}    (Ctrl-C stops it)\n", flush=True)
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
        names = ", ".join(services.running) or "nothing"
        services.stop()
        print(f"stopped {names}; the database keeps running (export-platform db stop)", flush=True)
