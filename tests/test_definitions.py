"""The code location loads, and every export type has a job whose config the Launchpad can show."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil

from export_platform.planning.config import ExportConfig, config_class_for
from export_platform.definitions import defs
from export_platform.catalog.export_types import REGISTRY
from export_platform.catalog.registry import ExportType, Filter, Registry, ValueType
from export_platform.naming import MAX_RUNTIME_TAG
from export_platform.resources.database_url import DATABASE_URL_ENV
from export_platform.home import HOME_ENV

import pytest


def test_every_export_type_has_a_job():
    # The names themselves, as docs and the Launchpad show them: the one place they are spelled out.
    defs.get_repository_def().load_all_definitions()
    # Dagster's own implicit job (`__ASSET_JOB`, which executes the row-count check) aside.
    names = sorted(j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__"))
    chunked = [t.chunked_job_name for t in REGISTRY if t.chunk_key]
    assert chunked == [f"export_{n}_chunked" for n in ("users", "ezpass_transactions", "ledger_postings")]
    assert names == sorted([*(f"export_{n}" for n in REGISTRY.names()), *chunked, "retention_cleanup"])


def _fields(model: type) -> dict:
    return dict(model.model_fields)


@pytest.mark.parametrize("export_type", list(REGISTRY), ids=REGISTRY.names())
def test_config_is_typed_and_described(export_type):
    config_class = config_class_for(export_type)
    assert issubclass(config_class, ExportConfig)
    fields = _fields(config_class)
    sections = ["csv", "parquet", "xlsx", "pdf"]
    assert {"format", "filters", "columns", "labels", "time_zone", "formula_protection", *sections, "output_path",
            "chunks"} <= set(fields)
    filter_fields = _fields(fields["filters"].annotation)
    assert list(filter_fields) == [f.name for f in export_type.filters]
    nested = [*fields.values(), *filter_fields.values()]
    nested += [f for section in sections for f in _fields(fields[section].annotation).values()]
    assert all(f.description for f in nested)
    job = defs.resolve_job_def(export_type.job_name)
    assert job.tags[MAX_RUNTIME_TAG] == str(export_type.max_runtime_seconds)
    plan_config = job.graph.node_named(f"plan_{export_type.name}").definition.config_schema.as_field().config_type
    assert "filters" in plan_config.fields and plan_config.fields["filters"].description


def test_a_declaration_is_checked_when_it_is_made():
    with pytest.raises(ValueError, match="undeclared columns"):
        ExportType("t", "t", columns=("id",), order_by=("id",), filters=(Filter("x", "missing", ValueType.TEXT),))
    with pytest.raises(ValueError, match="chunk_key must be the first order_by column"):
        ExportType("t", "t", columns=("id", "day"), order_by=("day", "id"), chunk_key="id")
    with pytest.raises(ValueError, match="share a name"):
        Registry([ExportType("t", "t", ("id",), ("id",)), ExportType("t", "u", ("id",), ("id",))])


def _postgres_under(folder) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name", "cmdline"])
            if p.info["name"] == "postgres" and str(folder) in " ".join(p.info["cmdline"] or ())]


def test_a_code_location_without_its_database_url_fails_at_load_and_starts_no_postgres(tmp_path):
    # As a daemon, webserver or code server loads it in a pod whose secret is missing.
    env = {k: v for k, v in os.environ.items() if k != DATABASE_URL_ENV}
    env |= {HOME_ENV: str(tmp_path / "platform"), "DAGSTER_HOME": str(tmp_path)}
    loaded = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-m", "export_platform.definitions"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert loaded.returncode != 0
    assert f"DatabaseUrlMissing: {DATABASE_URL_ENV} is not set" in loaded.stdout + loaded.stderr
    assert not (tmp_path / "platform" / "pgdata").exists()
    assert _postgres_under(tmp_path) == []


@pytest.mark.parametrize("export_type", list(REGISTRY), ids=REGISTRY.names())
def test_the_launchpad_opens_with_the_columns_and_every_filter(export_type):
    import dagster as dg

    job = defs.resolve_job_def(export_type.job_name)
    ops = job.run_config_schema.config_type.fields["ops"]
    assert ops.default_provided  # what the Launchpad shows before anyone types (was empty: Ctrl+Space only)
    config = ops.default_value[f"plan_{export_type.name}"]["config"]
    assert config["columns"] == list(export_type.columns)
    assert config["filters"] == {f.name: None for f in export_type.filters}
    assert dg.validate_run_config(job, {"ops": ops.default_value})
