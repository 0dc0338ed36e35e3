"""Bad input through the job and the CLI: a clear error naming the field, no file, no change."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from support.readback import run_job

INJECTION = "x'); DROP TABLE users;--"


def fingerprint(db) -> list[tuple]:
    tables = db.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
    ).fetchall()
    sums = [
        db.execute(f'SELECT count(*), md5(string_agg(md5(t::text), \'\' ORDER BY t::text)) FROM "{name}" t').fetchone()
        for (name,) in tables
    ]
    return tables + sums


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def unchanged(db, storage_root):
    """Asserts after the test that the database and the storage folder are as they were."""
    before, files = fingerprint(db), files_under(storage_root)
    yield
    assert fingerprint(db) == before
    assert files_under(storage_root) == files


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"columns": ["id", "password"]}, "columns: unknown column 'password'"),
        ({"columns": [INJECTION]}, "columns: unknown column"),
        ({"filters": {"lifetime_value_min": "ten"}}, "filters.lifetime_value_min: expected a decimal number"),
        ({"filters": {"signup_date_from": INJECTION}}, "filters.signup_date_from: expected a date"),
        (
            {"filters": {"signup_date_from": "2024-02-01", "signup_date_to": "2024-01-01"}},
            "filters.signup_date_to: reversed range",
        ),
        ({"csv": {"delimiter": "\n"}}, "csv.delimiter: must be exactly one character"),
        ({"csv": {"date_format": "%Q"}}, "csv.date_format: not a valid strftime format"),
        ({"time_zone": "Nowhere/Land"}, "time_zone: unknown time zone 'Nowhere/Land'"),
        ({"labels": {"password": "Password"}}, "labels.password: not an exported column"),
        # A list filter takes one value or a list in the Launchpad; planning checks their type.
        ({"filters": {"country_code": 5}}, "filters.country_code: expected text, got int 5"),
        ({"filters": {"country_code": {"a": 1}}}, "filters.country_code"),
        ({"format": "parquet", "parquet": {"compression": "lz4", "compression_level": 1}}, "parquet.compression_level"),
    ],
)
def test_job_fails_at_planning_naming_the_field(resources, unchanged, config, message):
    result = run_job("users", {"format": "csv", **config}, resources)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "plan_users"
    assert message in failure.step_failure_data.error.message
    assert not [e for e in result.all_events if e.step_key == "extract_export" and e.is_step_start]


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"filters": {INJECTION: "x"}}, f'unexpected config entry "{INJECTION}"'),
        ({"format": "xls"}, "format not in enum"),
        ({"filters": {"lifetime_value_min": ["1", "2"]}}, "filters:lifetime_value_min"),
    ],
)
def test_launchpad_config_rejects_unknown_names_and_wrong_types(resources, unchanged, config, path):
    with pytest.raises(dg.DagsterInvalidConfigError, match=path.replace("(", r"\(").replace(")", r"\)")):
        run_job("users", {"format": "csv", **config}, resources)


def test_injection_as_a_value_is_just_a_value(db, resources, unchanged):
    result = run_job("users", {"format": "csv", "filters": {"subscription_tier": [INJECTION]}}, resources)
    assert result.success
    path = Path(result.output_for_node("publish_export").uri.removeprefix("file://"))
    assert path.read_text().splitlines()[1:] == []
    path.unlink()  # the `unchanged` check is about the database; this file was a legitimate export


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "nope"], "export_type: unknown export type 'nope'"),
        (["run", "users", "--format", "xls"], "format: unknown format 'xls'"),
        (["run", "users", "--filter", f"{INJECTION}=1"], "unknown filter for users"),
        (["run", "users", "--filter", "lifetime_value_min"], "expected --filter name=value"),
        (["run", "users", "--columns", f"id,{INJECTION}"], "columns: unknown column"),
        (["run", "ezpass_transactions", "--filter", "driver_id=7,seven"], "filters.driver_id: expected a whole number"),
    ],
)
def test_cli_reports_bad_input_and_exits_2(database_url, storage_root, unchanged, tmp_path, argv, message):
    output = tmp_path / "out.csv"
    done = subprocess.run(
        [sys.executable, "-m", "export_platform.tooling.cli", *argv, "--output", str(output)],
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert not output.exists() and list(tmp_path.iterdir()) == []


def test_pdf_above_its_row_limit_is_refused_before_any_data_is_read(resources, unchanged, monkeypatch):
    monkeypatch.setattr("export_platform.catalog.formats.PDF_ROW_LIMIT", 100)  # the sample tables hold 3,000 rows
    result = run_job("users", {"format": "pdf"}, resources)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "plan_users"
    assert "format: pdf holds at most 100 rows and this request matches 3,000" in failure.step_failure_data.error.message
    assert not [e for e in result.all_events if e.step_key == "extract_export" and e.is_step_start]
