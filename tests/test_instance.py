"""Which Dagster instance each command uses. `demo` and `dev` prepare one of their own under the
platform home; the deployed commands (`workers`, `cleanup`, `health`) use the one DAGSTER_HOME
names, as every Dagster process does, and refuse to start without it. dagster.yaml ships in the
package, so an installed (non-editable) copy finds it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import dagster as dg
import pytest
from dagster._daemon.types import DaemonHeartbeat

from export_platform.resources.database_url import DATABASE_URL_ENV
from export_platform.home import HOME_ENV
from export_platform.processes import FreshWorkers, ProcessSpec, Processes
from export_platform.tooling.instance import prepare_dagster_home
from support.daemon_stack import fresh_database
from support.readback import database_beside

CLI = [sys.executable, "-m", "export_platform.tooling.cli"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def given(database_url, tmp_path, monkeypatch):
    """A deployment's instance: its own DAGSTER_HOME and Dagster database; the platform home empty."""
    from sqlalchemy.engine import make_url

    from export_platform.tooling.instance import DAGSTER_DATABASE_URL_ENV

    dagster_url = make_url(fresh_database(database_url, "given_instance")).set(drivername="postgresql+psycopg2")
    monkeypatch.setenv(DAGSTER_DATABASE_URL_ENV, dagster_url.render_as_string(hide_password=False))
    app_url = database_beside(database_url, "given_instance_app")
    env = {**os.environ, **prepare_dagster_home(tmp_path / "given", app_url), HOME_ENV: str(tmp_path / "home"),
           DATABASE_URL_ENV: app_url, "EXPORT_PLATFORM_STORAGE_URL": str(tmp_path / "exports")}
    from export_platform.requests.store import RequestStore

    RequestStore(url=app_url).migrate()
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        yield env, instance


def run(env: dict, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_cleanup_and_health_use_the_given_dagster_home(given, tmp_path):
    env, instance = given
    done = run(env, "cleanup", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert instance.get_runs_count(dg.RunsFilter(job_name="retention_cleanup")) == 1
    for daemon in ("SENSOR", "QUEUED_RUN_COORDINATOR", "MONITORING"):
        instance.add_daemon_heartbeat(DaemonHeartbeat(time.time(), daemon, "given"))
    health = run(env, "health")
    assert "ok    daemon SENSOR: heartbeat" in health.stdout, health.stdout + health.stderr
    assert not (tmp_path / "home").exists()  # no instance of its own under the platform home


@pytest.mark.slow
def test_workers_serve_the_given_instance(given, tmp_path):
    env, instance = given
    running = Processes(instance)  # the command as an operator runs it, from anywhere
    running.start(ProcessSpec("workers", (*CLI, "workers", "--count", "1"), env, log=tmp_path / "workers.log",
                              ready=FreshWorkers(1)))
    try:
        running.wait_ready("workers", 120)
    finally:
        running.stop()
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("command", [["cleanup"], ["health"], ["workers"]])
def test_deployed_commands_need_a_dagster_home_with_its_dagster_yaml(command, database_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env |= {HOME_ENV: str(tmp_path / "home"), DATABASE_URL_ENV: database_url}
    done = run(env, *command, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: DAGSTER_HOME is not set"), done.stderr
    (tmp_path / "empty").mkdir()
    done = run({**env, "DAGSTER_HOME": str(tmp_path / "empty")}, *command, timeout=120)
    assert done.returncode == 2 and "has no dagster.yaml" in done.stderr, done.stderr
    assert not (tmp_path / "home").exists() and list((tmp_path / "empty").iterdir()) == []


@pytest.mark.slow
def test_dagster_yaml_ships_in_the_package(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and egg-info beside the sources
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", ".export_platform", "*.egg-info", "__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("export_platform-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if n.endswith("/dagster.yaml")] == ["export_platform/tooling/dagster.yaml"]
