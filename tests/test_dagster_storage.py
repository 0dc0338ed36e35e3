"""Dagster's storage as dagster.yaml configures it keeps its Postgres connections between statements
(export_platform/tooling/dagster_storage.py), in the process that reads dagster.yaml and in those
built from its instance ref (code servers, run processes)."""

from __future__ import annotations

import dagster as dg
import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from support.daemon_stack import fresh_database
from export_platform.tooling.dagster_storage import PooledPostgresStorage
from export_platform.tooling.instance import DAGSTER_DATABASE_URL_ENV, prepare_dagster_home


@pytest.fixture
def instance(database_url, tmp_path, monkeypatch):
    dagster_url = make_url(fresh_database(database_url, "pooled_storage")).set(drivername="postgresql+psycopg2")
    monkeypatch.setenv(DAGSTER_DATABASE_URL_ENV, dagster_url.render_as_string(hide_password=False))
    env = prepare_dagster_home(tmp_path / "dagster_home", database_url)
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        yield instance


def session(instance: dg.DagsterInstance) -> tuple[int, str]:
    """The server process behind the run storage's next statement, and its statement timeout."""
    with instance.run_storage.connect() as conn:
        return conn.execute(sa.text("SELECT pg_backend_pid()")).scalar(), conn.execute(sa.text("SHOW statement_timeout")).scalar()


def test_successive_statements_share_one_connection_without_a_timeout(instance):
    instance.get_runs(limit=1)
    first = session(instance)
    assert session(instance) == first
    assert first[1] == "0"


def test_processes_built_from_the_instance_ref_pool_too(instance):
    ref = instance.get_ref()
    assert ref.storage_data.class_name == PooledPostgresStorage.__name__
    with dg.DagsterInstance.from_ref(ref) as child:
        assert session(child) == session(child)


def test_a_connection_the_server_dropped_is_replaced_without_failing_a_statement(instance, database_url):
    pid, _ = session(instance)
    with psycopg.connect(database_url, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
    assert instance.get_runs(limit=1) == []
    assert session(instance)[0] != pid
