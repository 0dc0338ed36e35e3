"""One declaration of the stack's processes (export_platform/processes.py): what `dev` starts, what
the tests' daemon and serve stacks start and what the supervisor starts for each warm worker are the
same specs; and `Processes` starts them in order, waits for them and stops them as the specs say."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from pathlib import Path

import pytest
import yaml

from export_platform import processes
from export_platform.links import PUBLIC_URL_ENV, SIGNING_KEY_ENV
from export_platform.processes import PortOpen, ProcessSpec, Processes, Stop, free_port
from export_platform.tooling.cli import build_parser
from export_platform.tooling.dev import dev_specs
from support.daemon_stack import daemon_stack_specs, webserver_spec
from support.serve_stack import serve_env, serve_spec

PYTHON = sys.executable
DEV = ["serve", "workers", "code-server", "dagster-daemon", "dagster-webserver"]


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    home = tmp_path / "Données" / "dagster home"
    home.mkdir(parents=True)
    return {"PATH": "/usr/bin:/bin", "DAGSTER_HOME": str(home), SIGNING_KEY_ENV: "a-key-for-alice@example.com"}


def by_name(specs: list[ProcessSpec]) -> dict[str, ProcessSpec]:
    return {spec.name: spec for spec in specs}


def test_dev_starts_each_process_with_its_command_folder_environment_and_log_level(env):
    code_port = free_port()
    specs = dev_specs(env, "0.0.0.0", 3555, "info", 3556, 3, code_port)
    assert [s.name for s in specs] == DEV
    home = env["DAGSTER_HOME"]
    workspace = Path(home) / "workspace.yaml"
    assert yaml.safe_load(workspace.read_text()) == {"load_from": [{"grpc_server": {
        "host": "127.0.0.1", "port": code_port, "location_name": "export_platform.definitions"}}]}
    expected = {
        "serve": (PYTHON, "-m", "export_platform.tooling.cli", "serve", "--host", "0.0.0.0", "--port", "3556",
                  "--log-level", "info", "--exit-with-parent", str(os.getpid())),
        "workers": (PYTHON, "-m", "export_platform.workers", "--count", "3"),
        "code-server": (PYTHON, "-m", "dagster", "code-server", "start", "-m", "export_platform.definitions",
                        "--location-name", "export_platform.definitions", "-h", "127.0.0.1", "-p", str(code_port),
                        "--log-level", "info"),
        "dagster-daemon": (PYTHON, "-m", "export_platform.tooling.daemon", "run", "-w", str(workspace), "--log-level", "info"),
        "dagster-webserver": (PYTHON, "-m", "dagster_webserver", "-w", str(workspace), "-h", "0.0.0.0", "-p", "3555",
                              "--dagster-log-level", "info"),
    }
    assert {s.name: s.argv for s in specs} == expected
    # In DAGSTER_HOME (Dagster warns of the project's dagster.yaml in its working folder); serve where dev runs.
    assert {s.name: s.cwd for s in specs} == {**{name: home for name in DEV}, "serve": None}
    assert {s.name: s.log_level for s in specs} == {**{name: "info" for name in DEV}, "workers": None}
    assert {s.name: s.log for s in specs} == {
        "serve": None, "code-server": None, "dagster-webserver": None,
        "workers": Path(home) / "workers.log", "dagster-daemon": Path(home) / "daemon.log",
    }
    # One environment, with serve's public URL and the signing key the runs sign their links with.
    assert all(s.env is env for s in specs) and env[PUBLIC_URL_ENV] == "http://127.0.0.1:3556"
    named = by_name(specs)
    assert [named["dagster-daemon"].after, named["dagster-webserver"].after] == [("code-server",)] * 2
    assert named["code-server"].ready == PortOpen(code_port)
    assert named["dagster-webserver"].ready == processes.Answers("http://127.0.0.1:3555/server_info")
    assert named["workers"].ready == processes.FreshWorkers(3)
    assert named["dagster-daemon"].ready == processes.SensorHeartbeat()
    # The pool drains on SIGTERM: up to the grace period (dagster.yaml's 60 s) and its workers' margin.
    assert named["workers"].stop == Stop(signal.SIGTERM, 60 + processes.STOP_MARGIN_SECONDS + 30)


def test_without_serve_dev_starts_the_rest(env):
    assert [s.name for s in dev_specs(env, "127.0.0.1", 3555, "warning", None, 1, free_port())] == DEV[1:]
    assert PUBLIC_URL_ENV not in env


def test_the_daemon_stack_of_the_tests_is_devs(env):
    """The tests run dev's processes: the same command, folder, environment, log level, readiness and
    stop; only what dev shows in the terminal goes to a file."""
    assert build_parser().parse_args(["dev"]).log_level == processes.LOG_LEVEL  # what `make dev` runs at
    code_port = free_port()
    dev = by_name(dev_specs(env, "127.0.0.1", 3555, processes.LOG_LEVEL, 3556, 5, code_port))
    tests = daemon_stack_specs(env, code_port, 5)
    assert [s.name for s in tests] == ["workers", "code-server", "dagster-daemon"]
    for spec in tests:
        assert dataclasses.replace(spec, log=dev[spec.name].log) == dev[spec.name]
        assert spec.log == dev[spec.name].log or spec.log == Path(env["DAGSTER_HOME"]) / f"{spec.name}.log"
    assert webserver_spec(env, code_port, 3555) == dev["dagster-webserver"]  # the Launchpad's tests


def test_the_serve_of_the_tests_is_devs(tmp_path, env):
    dev = by_name(dev_specs(env, "127.0.0.1", 3555, processes.LOG_LEVEL, 3556, 1, free_port()))["serve"]
    tests = serve_spec(serve_env(tmp_path / "My Exports", 3556), 3556, tmp_path / "serve.log")
    # Its own environment (the test signing key, the exports folder); the rest is dev's.
    assert dataclasses.replace(tests, env=dev.env, log=None) == dev


def test_a_warm_worker_is_started_in_a_session_of_its_own_and_drained_with_sigterm():
    spec = processes.worker(4242, 20.0, 2)
    assert spec.argv == (PYTHON, "-m", "export_platform.workers.worker", "--max-runs", "2", "--grace-period", "20.0",
                         "--supervisor", "4242")
    assert spec.new_session and spec.env is None and spec.cwd is None  # the supervisor's own
    assert spec.stop == Stop(signal.SIGTERM, 20.0 + processes.STOP_MARGIN_SECONDS)
    assert processes.worker(4242, 60.0).argv[3:] == ("--grace-period", "60.0", "--supervisor", "4242")


def listener(name: str, port: int, before: str = "", **fields) -> ProcessSpec:
    """A process that listens on `port` (after running `before`) until it is stopped."""
    code = (f"import signal, socket, time\n{before}\n"
            f"s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen()\ntime.sleep(120)")
    return ProcessSpec(name, (PYTHON, "-c", code), ready=PortOpen(port), **fields)


def test_a_process_starts_only_once_those_it_comes_after_are_up(tmp_path):
    port = free_port()
    slow = listener("slow", port, before="time.sleep(1)")
    checks = ProcessSpec("checks", (PYTHON, "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}))"),
                         after=("slow",))
    running = Processes()
    try:
        running.start_all([slow, checks])
        assert running["checks"].wait(30) == 0  # it found `slow` listening
    finally:
        running.stop()


def test_waiting_names_a_process_that_ended_before_it_was_up(tmp_path):
    running = Processes()
    running.start(ProcessSpec("broken", (PYTHON, "-c", "print('no database'); raise SystemExit(3)"),
                              log=tmp_path / "broken.log", ready=PortOpen(free_port())))
    with pytest.raises(RuntimeError, match="`broken` exited with code 3 before broken was ready"):
        running.wait_ready("broken")
    assert (tmp_path / "broken.log").read_text() == "no database\n"


def test_stopping_sends_each_its_signal_and_kills_what_outlives_its_grace_period():
    polite, interrupted, stubborn = free_port(), free_port(), free_port()
    running = Processes()
    running.start(listener("polite", polite))
    running.start(listener("interrupted", interrupted, stop=Stop(signal.SIGINT)))
    running.start(listener("stubborn", stubborn, before="signal.signal(signal.SIGTERM, signal.SIG_IGN)",
                           stop=Stop(grace_seconds=1)))
    for name in ("polite", "interrupted", "stubborn"):
        running.wait_ready(name, 30)
    started = dict(running.running)
    running.stop("stubborn")
    assert started["stubborn"][1].returncode == -signal.SIGKILL and list(running.running) == ["polite", "interrupted"]
    running.stop()
    assert [started[n][1].returncode for n in ("polite", "interrupted")] == [-signal.SIGTERM, -signal.SIGINT]
    assert running.running == {}
