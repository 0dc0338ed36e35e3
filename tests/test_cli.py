"""The `export-platform` console script, as a user runs it: separate processes, real database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from export_platform.embedded_postgres import DATABASE_URL_ENV, HOME_ENV
from export_platform.formats import ExportFormat
from readback import database_beside, db_rows, file_rows

CLI = [sys.executable, "-m", "export_platform.cli"]


def cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, env=env or os.environ, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done


def test_db_url_prints_the_configured_database(database_url):
    assert cli("db", "url").stdout.strip() == database_url


def test_run_prints_rows_bytes_seconds_and_path(db, database_url, tmp_path):
    output = tmp_path / "gb.csv"
    done = cli("run", "users", "--filter", "country_code=GB,FR", "--columns", "id,name,country_code",
               "--output", str(output))
    fields = dict(part.split("=", 1) for part in done.stdout.split())
    expected = db_rows(db, "users", ["id", "name", "country_code"], "WHERE country_code IN ('GB', 'FR')")
    assert int(fields["rows"]) == len(expected) > 0
    assert int(fields["bytes"]) == output.stat().st_size
    assert float(fields["seconds"]) > 0 and fields["path"] == str(output)
    assert file_rows(db, "users", ["id", "name", "country_code"], "csv", output) == expected


def test_run_takes_export_options_as_json(db, tmp_path):
    output = tmp_path / "excel.csv"
    cli("run", "users", "--columns", "id,email", "--delimiter", ";", "--output", str(output),
        "--options", '{"csv": {"bom": true, "line_terminator": "crlf"}, "labels": {"email": "E-mail"}}')
    data = output.read_bytes()
    assert data.startswith(b"\xef\xbb\xbfid;E-mail\r\n1;\"\"\r\n")
    rows = file_rows(db, "users", ["id", "email"], "csv", output, delimiter=";", bom=True, labels=["id", "E-mail"])
    assert rows[4] == (5, "'+1@example.com")  # a BOM turns formula protection on


@pytest.mark.slow
def test_seed_is_deterministic_and_demo_exports_every_format(database_url, tmp_path):
    url = database_beside(database_url, "cli_check")
    env = {**os.environ, DATABASE_URL_ENV: url, "EXPORT_PLATFORM_STORAGE_URL": str(tmp_path / "exports")}
    digest = "SELECT md5(string_agg(md5(t::text), '' ORDER BY id)) FROM {} t"

    def digests() -> list:
        with psycopg.connect(url) as conn:
            return [conn.execute(digest.format(t)).fetchone() for t in ("users", "ezpass_transactions", "ledger_postings")]

    cli("seed", "--rows", "500", env=env)
    first = digests()
    done = cli("demo", "--rows", "500", env=env)
    assert digests() == first  # same N, same data

    table = [line.split() for line in done.stdout.splitlines() if line.split()[:1] in (["users"], ["ezpass_transactions"], ["ledger_postings"])]
    assert sorted((row[0], row[1]) for row in table) == sorted(
        (t, f.value) for t in ("users", "ezpass_transactions", "ledger_postings") for f in ExportFormat
    )
    # pdf is narrowed to one month / one day (its 10,000-row limit): the same rows, counted by hand.
    pdf_where = {
        "users": "signup_date BETWEEN '2015-01-01' AND '2015-01-31'",
        "ezpass_transactions": "posting_date = '2024-01-01'",
        "ledger_postings": "posting_date = '2023-01-01'",
    }
    with psycopg.connect(url) as conn:
        pdf_rows = {t: conn.execute(f"SELECT count(*) FROM {t} WHERE {w}").fetchone()[0] for t, w in pdf_where.items()}
    for row in table:
        expected = pdf_rows[row[0]] if row[1] == "pdf" else 500
        assert int(row[2].replace(",", "")) == expected > 0
        assert Path(row[5]).stat().st_size == int(row[3].replace(",", ""))


def test_run_to_s3_that_fails_to_upload_leaves_no_staging_file(database_url, s3_endpoint, tmp_path):
    env = {**os.environ, "EXPORT_PLATFORM_STORAGE_URL": "s3://no-such-bucket/exports", HOME_ENV: str(tmp_path / "home")}
    done = subprocess.run([*CLI, "run", "ledger_postings", "--columns", "id"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1 and "NoSuchBucket" in done.stderr
    staging = tmp_path / "home" / "staging"
    assert staging.is_dir()  # the file was staged there before the upload failed
    assert [p for p in staging.rglob("*") if p.is_file()] == []


def test_delete_that_cannot_reach_the_file_fails_and_leaves_the_row(db, database_url, storage_root):
    request_id = db.execute(
        "INSERT INTO export_requests (export_type, format, params, status, file_uri) "
        "VALUES ('users', 'csv', '{}', 'COMPLETED', 'file:///not/the/storage/users.csv') RETURNING id"
    ).fetchone()[0]
    done = subprocess.run([*CLI, "delete", str(request_id)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "is not in the storage folder" in done.stderr and f"request {request_id} is unchanged" in done.stderr
    assert db.execute("SELECT status FROM export_requests WHERE id = %s", (request_id,)).fetchone()[0] == "COMPLETED"


def test_cleanup_reports_a_file_it_could_not_delete_and_exits_1(database_url, tmp_path):
    from sqlalchemy.engine import make_url

    from export_platform.resources.requests import RequestStore

    database_beside(database_url, "cleanup_cli")
    url = make_url(database_url).set(database="cleanup_cli").render_as_string(hide_password=False)  # Dagster needs a URL
    RequestStore(url=url).migrate()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM export_requests")
        conn.execute(
            "INSERT INTO export_requests (export_type, format, params, status, file_uri, expires_at) "
            "VALUES ('users', 'csv', '{}', 'COMPLETED', 'file:///not/the/storage/users.csv', now() - interval '1 day')"
        )
    env = {
        **os.environ,
        DATABASE_URL_ENV: url,
        HOME_ENV: str(tmp_path / "home"),
        "EXPORT_PLATFORM_STORAGE_URL": str(tmp_path / "exports"),
    }
    done = subprocess.run([*CLI, "cleanup"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr
    [line] = [line for line in done.stdout.splitlines() if line.startswith("expire_files ")]
    assert "files=0" in line and "failed=1" in line
    assert "1 file(s) could not be deleted and stay for the next cleanup" in done.stderr
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT status FROM export_requests").fetchall() == [("COMPLETED",)]
