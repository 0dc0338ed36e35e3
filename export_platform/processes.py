"""Every process of the platform's stack, declared once: how it is started (command, working
folder, environment, log level, where its output goes), how to know it is up, how it is stopped.

`export-platform dev`, the run-worker supervisor (each warm worker), the tests' daemon stack and
the benchmarks all build their processes with the functions below and start, wait for and stop
them with `Processes`, so the tests run the stack users run. `stack_specs` is the stack `dev`
starts, in order; adding a process to it is one builder here and one line there (docs/reference.md,
"Layout").

The commands name the Python this runs on, so no venv needs to be on PATH. The Dagster processes run
in DAGSTER_HOME: Dagster warns that a dagster.yaml in its working folder (the project's) "will not
be used". Module names are strings, not imports: this module sits below everything it starts.
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

CODE_LOCATION = "export_platform.definitions"
# `dev --log-level`'s default (tooling/cli.py, which imports nothing but the standard library before parsing): the tests run it too.
LOG_LEVEL = "warning"
START_SECONDS = 180  # loading the code location on a busy 2-core machine
POLL_SECONDS = 0.2
STOP_SECONDS = 90  # `dagster dev` itself gives its processes 60 s
# A worker that overran the grace period gets this long to end its interrupted run before SIGKILL.
STOP_MARGIN_SECONDS = 30.0
# The run launcher's default grace period (dagster.yaml sets it too): how long the pool's drain may take, unless given.
DEFAULT_GRACE_SECONDS = 60.0
WORKER_MODULE = "export_platform.workers.worker"


# --- how to know a process is up: each is called with the process and the Dagster instance (or None) ---

@dataclass(frozen=True)
class Started:
    """Up once started (a warm worker: its supervisor watches its heartbeat)."""

    def __call__(self, process: subprocess.Popen, instance: Any) -> bool:
        return True


@dataclass(frozen=True)
class PortOpen:
    port: int
    host: str = "127.0.0.1"

    def __call__(self, process: subprocess.Popen, instance: Any) -> bool:
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex((self.host, self.port)) == 0


@dataclass(frozen=True)
class Answers:
    """An HTTP GET of `url` answers 200."""

    url: str

    def __call__(self, process: subprocess.Popen, instance: Any) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False


@dataclass(frozen=True)
class SensorHeartbeat:
    """The sensor daemon has sent a heartbeat since the process started (it is then ticking; an
    earlier daemon's heartbeats stay in the instance storage). Needs the instance."""

    def __call__(self, process: subprocess.Popen, instance: Any) -> bool:
        beat = instance.get_daemon_heartbeats().get("SENSOR")
        return beat is not None and beat.timestamp >= psutil.Process(process.pid).create_time()


@dataclass(frozen=True)
class FreshWorkers:
    """`count` run workers have a fresh heartbeat (WarmPoolRunLauncher.fresh_workers). Needs the instance."""

    count: int

    def __call__(self, process: subprocess.Popen, instance: Any) -> bool:
        return instance.run_launcher.fresh_workers() >= self.count


Ready = Started | PortOpen | Answers | SensorHeartbeat | FreshWorkers


@dataclass(frozen=True)
class Stop:
    signal: signal.Signals = signal.SIGTERM
    grace_seconds: float = STOP_SECONDS  # then SIGKILL


@dataclass(frozen=True)
class ProcessSpec:
    """One process of the stack, as data: two equal specs start the same process."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] | None = None  # None: this process's own
    cwd: str | None = None  # None: this process's own
    log_level: str | None = None  # as passed in `argv`; None: the process has no such option
    log: Path | None = None  # its output, appended; None: this process's terminal
    ready: Ready = Started()
    stop: Stop = Stop()
    after: tuple[str, ...] = ()  # processes that must be up before this one starts
    new_session: bool = False  # a Ctrl-C in the terminal does not reach it (its supervisor stops it)


# --- the builders: one per process of the stack ---

def _python(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", *args)


def _home(env: Mapping[str, str]) -> str:
    return env["DAGSTER_HOME"]


def code_server(env: Mapping[str, str], port: int, log_level: str = LOG_LEVEL) -> ProcessSpec:
    """The one code server the daemon and the webserver share through a workspace file, so that the
    code location is loaded once and stays loaded (given `-m`, each would start its own, and the
    daemon replaces its own every minute: dagster/_daemon/controller.py, RELOAD_WORKSPACE_INTERVAL).
    It listens once the code is loaded."""
    return ProcessSpec(
        "code-server",
        _python("dagster", "code-server", "start", "-m", CODE_LOCATION, "--location-name", CODE_LOCATION,
                "-h", "127.0.0.1", "-p", str(port), "--log-level", log_level),
        env, _home(env), log_level, ready=PortOpen(port),
    )


def workspace(env: Mapping[str, str], code_port: int) -> Path:
    """The workspace file (in DAGSTER_HOME) that points the webserver and the daemon at the code server."""
    path = Path(_home(env)) / "workspace.yaml"
    server = {"host": "127.0.0.1", "port": code_port, "location_name": CODE_LOCATION}
    path.write_text(yaml.safe_dump({"load_from": [{"grpc_server": server}]}))
    return path


def daemon(env: Mapping[str, str], workspace_file: Path, log_level: str = LOG_LEVEL) -> ProcessSpec:
    """`dagster-daemon run` with its sensor loop shortened (export_platform/tooling/daemon.py),
    logging to DAGSTER_HOME/daemon.log."""
    return ProcessSpec(
        "dagster-daemon",
        _python("export_platform.tooling.daemon", "run", "-w", str(workspace_file), "--log-level", log_level),
        env, _home(env), log_level, Path(_home(env)) / "daemon.log", SensorHeartbeat(), after=("code-server",),
    )


def webserver(env: Mapping[str, str], workspace_file: Path, host: str, port: int, log_level: str = LOG_LEVEL) -> ProcessSpec:
    return ProcessSpec(
        "dagster-webserver",
        _python("dagster_webserver", "-w", str(workspace_file), "-h", host, "-p", str(port), "--dagster-log-level", log_level),
        env, _home(env), log_level, ready=Answers(f"{browser_url(host, port)}/server_info"), after=("code-server",),
    )


def serve(env: Mapping[str, str], host: str, port: int, log_level: str = LOG_LEVEL) -> ProcessSpec:
    """`export-platform serve`, ending with this process if it is killed. `env` holds its signing
    key and public URL."""
    return ProcessSpec(
        "serve",
        _python("export_platform.tooling.cli", "serve", "--host", host, "--port", str(port), "--log-level", log_level,
                "--exit-with-parent", str(os.getpid())),
        env, None, log_level, ready=PortOpen(port, "127.0.0.1" if host in ("0.0.0.0", "") else host),
    )


def worker_pool(
    env: Mapping[str, str], count: int, max_runs: int | None = None, grace_seconds: float | None = None
) -> ProcessSpec:
    """The warm run-worker pool (`export-platform workers`), logging to DAGSTER_HOME/workers.log; on
    SIGTERM it drains, which takes up to the grace period and the workers' margin."""
    options = (
        "--count", str(count),
        *(("--max-runs", str(max_runs)) if max_runs else ()),
        *(("--grace-period", str(grace_seconds)) if grace_seconds is not None else ()),
    )
    grace = DEFAULT_GRACE_SECONDS if grace_seconds is None else grace_seconds
    return ProcessSpec(
        "workers", _python("export_platform.workers", *options), env, _home(env), None, Path(_home(env)) / "workers.log",
        FreshWorkers(count), Stop(grace_seconds=grace + STOP_MARGIN_SECONDS + 30),
    )


def worker(supervisor: int, grace_seconds: float, max_runs: int | None = None, env: Mapping[str, str] | None = None,
           log: Path | None = None) -> ProcessSpec:
    """One warm run worker, as its supervisor (pid `supervisor`: the worker retires when it is gone)
    starts it: a new interpreter in a session of its own, so that a Ctrl-C in the terminal reaches the
    supervisor only, which then drains it (SIGTERM: it finishes its run within the grace period, and
    is killed past it and a margin)."""
    options = (*(("--max-runs", str(max_runs)) if max_runs else ()), "--grace-period", str(grace_seconds),
               "--supervisor", str(supervisor))
    return ProcessSpec(
        "worker", _python(WORKER_MODULE, *options), env, None, None, log,
        stop=Stop(grace_seconds=grace_seconds + STOP_MARGIN_SECONDS), new_session=True,
    )


def stack_specs(
    env: Mapping[str, str], code_port: int, workers: int, log_level: str = LOG_LEVEL,
    ui: tuple[str, int] | None = None, serve_at: tuple[str, int] | None = None,
) -> list[ProcessSpec]:
    """The stack `dev` starts, in order: `serve` first (every process that runs exports needs its URL
    and key, in `env`), the pool, the code server, then the daemon and the webserver on it. The
    tests' daemon stack is the same without the UI and `serve` (`ui`, `serve_at`: host and port)."""
    shared = workspace(env, code_port)
    return [
        *([serve(env, *serve_at, log_level)] if serve_at else []),
        worker_pool(env, workers),
        code_server(env, code_port, log_level),
        daemon(env, shared, log_level),
        *([webserver(env, shared, *ui, log_level)] if ui else []),
    ]


def browser_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{shown}:{port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- starting, waiting for, stopping ---

def start(spec: ProcessSpec) -> subprocess.Popen:
    env = dict(spec.env) if spec.env is not None else None
    if spec.log is None:
        return subprocess.Popen(spec.argv, env=env, cwd=spec.cwd, start_new_session=spec.new_session)
    with spec.log.open("ab") as out:
        return subprocess.Popen(spec.argv, env=env, cwd=spec.cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=spec.new_session)


def stop(processes: Sequence[tuple[ProcessSpec, subprocess.Popen]]) -> None:
    """Each its stop signal (each then stops its own children), then SIGKILL to any still running
    past its grace period."""
    for spec, process in processes:
        if process.poll() is None:
            process.send_signal(spec.stop.signal)
    started = time.monotonic()
    for spec, process in processes:
        try:
            process.wait(max(0.0, started + spec.stop.grace_seconds - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Processes:
    """Child processes started from specs, by name; waited for and stopped together or one by one.
    `instance`: the Dagster instance, for the readiness checks that need one."""

    instance: Any = None
    running: dict[str, tuple[ProcessSpec, subprocess.Popen]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> subprocess.Popen:
        return self.running[name][1]

    def start(self, spec: ProcessSpec) -> subprocess.Popen:
        for name in spec.after:
            self.wait_ready(name)
        process = start(spec)
        self.running[spec.name] = spec, process
        return process

    def start_all(self, specs: Sequence[ProcessSpec]) -> None:
        for spec in specs:
            self.start(spec)

    def exited(self, *names: str) -> tuple[str, int] | None:
        """The first process (of `names`, default all) that has ended, with its exit code."""
        for name, (_, process) in self.running.items():
            if (not names or name in names) and process.poll() is not None:
                return name, process.returncode
        return None

    def wait_ready(self, name: str, seconds: float = START_SECONDS) -> None:
        """Poll until `name` is up; raises if it or one it comes after ends first, or after `seconds`."""
        spec, process = self.running[name]
        deadline = time.monotonic() + seconds
        while not spec.ready(process, self.instance):
            if ended := self.exited(name, *spec.after):
                raise RuntimeError(f"`{ended[0]}` exited with code {ended[1]} before {name} was ready")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} was not ready after {seconds:.0f} s")
            time.sleep(POLL_SECONDS)

    def forget(self, name: str) -> subprocess.Popen:
        """`name`'s process, no longer one of these (its caller stops it)."""
        return self.running.pop(name)[1]

    def stop(self, *names: str) -> None:
        """`names` (default: all, the last started first to get its signal), all at once."""
        chosen = [self.running.pop(n) for n in (names or reversed(list(self.running))) if n in self.running]
        stop(chosen)
