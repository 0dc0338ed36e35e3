"""The `export-platform` console script, as a user runs it: separate processes, real database."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

import dagster as dg
import psutil
import psycopg
import pytest
from sqlalchemy.engine import make_url

from export_platform.links import SIGNING_KEY_ENV
from export_platform.tooling.cli import PENDING_HINT_SECONDS, PROGRESS_LINE_SECONDS, build_parser
from export_platform.tooling.dev import dev_workers
from export_platform.tooling.sample_data import seed
from export_platform.resources.database_url import DATABASE_URL_ENV
from export_platform.home import HOME_ENV
from export_platform.catalog.formats import ExportFormat
from export_platform.planning.plan import plan_request
from export_platform.tooling.instance import DAGSTER_DATABASE_URL_ENV, prepare_dagster_home
from export_platform.resources.storage import STORAGE_URL_ENV
from export_platform.units import human_bytes
from support.dev_server import clean_env, database_url_beside, get, running_dev
from export_platform.processes import free_port
from support.readback import database_beside, db_rows, file_rows


def wait_until(fetch, process: subprocess.Popen, seconds: float = 180):
    """Poll `fetch` until it returns something, failing if `process` exits first."""
    deadline = time.monotonic() + seconds
    while (found := fetch()) is None:
        assert process.poll() is None, f"exited with {process.returncode}"
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.2)
    return found

CLI = [sys.executable, "-m", "export_platform.tooling.cli"]


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
    dagster_url = database_url_beside(database_url, "cli_check_dagster")
    env = {**os.environ, DATABASE_URL_ENV: url, DAGSTER_DATABASE_URL_ENV: dagster_url, HOME_ENV: str(tmp_path),
           STORAGE_URL_ENV: str(tmp_path / "exports")}
    digest = "SELECT md5(string_agg(md5(t::text), '' ORDER BY id)) FROM {} t"

    def digests() -> list:
        with psycopg.connect(url) as conn:
            return [conn.execute(digest.format(t)).fetchone() for t in ("users", "ezpass_transactions", "ledger_postings")]

    cli("seed", "--rows", "500", env=env)
    first = digests()
    done = cli("demo", "--rows", "500", env=env)
    assert digests() == first  # same N, same data
    assert done.stderr == ""  # no Dagster warnings for the user to puzzle over

    types = ("users", "ezpass_transactions", "ledger_postings")
    table = [line.split() for line in done.stdout.splitlines() if line.split()[:1] in ([t] for t in types)]
    table = [row for row in table if len(row) == 7]  # type format rows size unit seconds file
    assert sorted((row[0], row[1]) for row in table) == sorted((t, f.value) for t in types for f in ExportFormat)
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
        path = tmp_path / "exports" / row[0] / row[6]
        assert human_bytes(path.stat().st_size) == f"{row[3]} {row[4]}"
    assert max(len(" ".join(row)) for row in table) <= 115  # was about 170 with full paths
    assert "What next:" in done.stdout and "make dev" in done.stdout
    # The runs are in the instance `dev` shows, not in a throwaway one.
    with psycopg.connect(make_url(dagster_url).set(drivername="postgresql").render_as_string(False)) as conn:
        recorded = conn.execute("SELECT pipeline_name, status FROM runs").fetchall()
    assert len(recorded) == len(table) and {status for _, status in recorded} == {"SUCCESS"}


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

    from export_platform.requests.store import RequestStore

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
        **prepare_dagster_home(tmp_path / "dagster", url),  # the deployment's instance
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


def _subcommands(parser=None, prefix=()) -> list[tuple[str, ...]]:
    """Every command path of the CLI: (), ("db",), ("db", "stop"), ..."""
    parser = parser or build_parser()
    found = [prefix]
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        for name, sub in action.choices.items():
            found += _subcommands(sub, (*prefix, name))
    return found


def test_every_command_answers_help_without_importing_dagster_or_polars():
    commands = _subcommands()
    assert ("db", "stop") in commands and ("dev",) in commands and len(commands) > 15
    check = (
        "import sys, contextlib, io\n"
        "from export_platform.tooling.cli import main\n"
        "for argv in sys.argv[1:]:\n"
        "    args = argv.split()\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        try:\n"
        "            main([*args, '--help'])\n"
        "        except SystemExit as done:\n"
        "            assert done.code == 0, (args, done.code)\n"
        "    assert 'usage: export-platform' in out.getvalue(), args\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'polars', 'pyarrow', 'psycopg'))\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", check, *(" ".join(c) for c in commands)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_option_and_argument_explains_itself():
    for command in _subcommands():
        parser = build_parser()
        for name in command:
            parser = next(a for a in parser._subparsers._group_actions).choices[name]
        assert parser.description, command
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                assert all(choice.help for choice in action._choices_actions), command
            else:
                assert action.help, (command, action.dest)


@pytest.mark.parametrize("group", [[], ["db"]])
def test_a_command_group_alone_prints_its_help(group):
    done = cli(*group)
    assert "usage: export-platform" in done.stdout and "COMMAND" in done.stdout


def test_db_stop_refuses_a_server_it_did_not_start(database_url):
    assert "nothing stopped" in cli("db", "stop").stdout
    with psycopg.connect(database_url) as conn:  # still up
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_db_stop_stops_the_embedded_server_and_the_next_command_starts_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != DATABASE_URL_ENV} | {HOME_ENV: str(tmp_path)}
    url = cli("db", "url", env=env).stdout.strip()
    postmaster = int((tmp_path / "pgdata" / "postmaster.pid").read_text().split()[0])
    assert cli("db", "stop", env=env).stdout.strip() == "stopped the embedded Postgres"
    assert not psutil.pid_exists(postmaster) or psutil.Process(postmaster).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url).close()
    assert cli("db", "stop", env=env).stdout.strip() == "the embedded Postgres is not running"
    assert cli("db", "url", env=env).stdout.strip() == url
    cli("db", "stop", env=env)


@pytest.mark.parametrize("command", [["db", "migrate"], ["cleanup"], ["workers"]])
def test_operator_commands_need_the_database_url_and_start_no_embedded_postgres(command, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != DATABASE_URL_ENV} | {HOME_ENV: str(tmp_path)}
    done = subprocess.run([*CLI, *command], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {DATABASE_URL_ENV} is not set"), done.stderr
    assert list(tmp_path.iterdir()) == []  # no pgdata, no DAGSTER_HOME


@pytest.mark.slow
def test_dev_serves_the_ui_from_a_clean_environment_and_stops_with_its_children(database_url, tmp_path):
    # As a new user runs it: no venv activated (only the system PATH), a fresh home folder.
    with running_dev(clean_env(database_url, tmp_path, "dev"), tmp_path) as dev:
        assert json.loads(get(f"{dev.url}/server_info"))["dagster_version"] == dg.__version__
        assert "<html" in get(dev.url)  # the UI itself
        assert "export_platform downloads" in get(dev.serve_url)  # serve, started by dev
        commands = [" ".join(p.cmdline()) for p in dev.children]
        # One code server, which the webserver and the daemon share: given a module instead, each
        # started its own, and the daemon replaced its every minute ("No heartbeat received").
        assert len([c for c in commands if " api grpc " in c]) == 1, commands
        assert all(" -w " in c for c in commands if "dagster_webserver" in c or "tooling.daemon" in c), commands
        # The pool sized to this machine: a core each, at most a deployment's 5 (was 5 whatever the machine).
        assert wait_for_processes(dev, "export_platform.workers.worker", dev_workers()) == dev_workers()
        assert dev_workers() <= min(os.cpu_count(), 5)
        log = tmp_path / "platform" / "dagster" / "workers.log"
        wait_until(lambda: log.read_text().count(" ready\n") >= dev_workers() or None, dev.process)
        assert "alembic" not in log.read_text()  # was 7 "setup plugin" INFO lines per worker start
        alive = dev.stop()
    assert dev.process.returncode == 0, dev.err.read_text()
    assert not alive
    printed, errors = dev.out.read_text(), dev.err.read_text()
    assert f"Dagster UI: {dev.url}" in printed
    # Nothing but the address: no traceback, no warning, no INFO line per sensor tick.
    assert "Traceback" not in errors and "Warning" not in errors and "INFO" not in errors + printed, errors


def test_request_is_planned_by_the_client_once_and_stored_as_typed(db, database_url):
    request_id = cli("request", "users", "--columns", "email, id", "--user", "alice@example.com").stdout.strip()
    try:
        params = db.execute("SELECT params FROM export_requests WHERE id = %s", (int(request_id),)).fetchone()[0]
        assert params["columns"] == "email, id"  # as typed; the sensor plans the row as the client did
        assert plan_request("users", "csv", params).columns == ("email", "id")
    finally:
        cli("cancel", request_id)
    refused = subprocess.run([*CLI, "request", "users", "--columns", "email, password"], capture_output=True, text=True)
    assert refused.returncode != 0 and "columns: unknown column 'password'" in refused.stderr, refused.stderr


@pytest.mark.parametrize(("size", "shown"), [(0, "0 bytes"), (1023, "1,023 bytes"), (1536, "1.5 KiB"), (5 << 30, "5.0 GiB")])
def test_sizes_read_as_people_read_them(size, shown):
    assert human_bytes(size) == shown


@pytest.mark.slow
def test_status_wait_hints_at_the_daemon_and_shows_progress_when_not_a_terminal(database_url, storage_root):
    request_id = cli("request", "users", "--user", "hint-check").stdout.strip()
    waiting = subprocess.Popen([*CLI, "status", request_id, "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        hint = waiting.stderr.readline()  # blocks until the hint, which comes while the request is PENDING
    finally:
        waiting.kill()
        progress = waiting.communicate()[0].splitlines()
        cli("cancel", request_id)
    assert hint.startswith(f"hint: request {request_id} is still PENDING after {PENDING_HINT_SECONDS} s")
    assert "export-platform dev" in hint
    # A pipe, as in CI or a log file: a line at once and then every PROGRESS_LINE_SECONDS, no bar redrawn.
    assert len(progress) >= PENDING_HINT_SECONDS // PROGRESS_LINE_SECONDS, progress
    assert all("PENDING" in line and "\r" not in line for line in progress)


def wait_for_processes(dev, command: str, count: int) -> int:
    """Poll until `count` processes running `command` are among dev's (they start in the background)."""
    def command_of(process: psutil.Process) -> str:
        try:
            return " ".join(process.cmdline())
        except psutil.NoSuchProcess:
            return ""

    def found() -> int | None:
        running = [p for p in psutil.Process(dev.process.pid).children(recursive=True) if command in command_of(p)]
        return len(running) if len(running) >= count else None

    return wait_until(found, dev.process)


def _without_database_url(tmp_path) -> dict:
    return {k: v for k, v in os.environ.items() if k != DATABASE_URL_ENV} | {HOME_ENV: str(tmp_path)}


@pytest.mark.slow
def test_serve_and_health_use_the_embedded_database_like_the_other_local_commands(tmp_path):
    env = _without_database_url(tmp_path) | {SIGNING_KEY_ENV: "a-local-signing-key-of-enough-bytes"}
    try:
        port = free_port()
        with (tmp_path / "serve.log").open("w") as log:
            serving = subprocess.Popen([*CLI, "serve", "--port", str(port), "--log-level", "warning"], env=env,
                                       stdout=log, stderr=subprocess.STDOUT)
        try:
            page = wait_until(lambda: get(f"http://127.0.0.1:{port}/"), serving)
        finally:
            serving.terminate()
            serving.wait(30)
        assert "export_platform downloads" in page and "/requests/ID" in page
        logged = (tmp_path / "serve.log").read_text()  # warnings only: this one line
        assert logged.startswith(f"serve: {DATABASE_URL_ENV} is not set: using the embedded Postgres") and logged.count("\n") == 1
        # With no instance (DAGSTER_HOME unset, `dev` never ran here), health says where to point it.
        checked = subprocess.run([*CLI, "health"], capture_output=True, text=True, env=env, timeout=300)
        assert checked.returncode == 2 and f"DAGSTER_HOME={tmp_path / 'dagster'}" in checked.stderr
        # Once `dev` has prepared its instance (done here as it does), health finds it; serve set the
        # request table up; health finds that, and no daemon, and says so.
        prepare_dagster_home(tmp_path / "dagster", cli("db", "url", env=env).stdout.strip())
        checked = subprocess.run([*CLI, "health"], capture_output=True, text=True, env=env, timeout=300)
        assert checked.returncode == 1, checked.stderr
        assert checked.stdout.startswith("ok    database reachable") and "FAIL  daemon SENSOR" in checked.stdout
        assert checked.stderr.startswith("health: EXPORT_PLATFORM_DATABASE_URL is not set: using the embedded Postgres")
    finally:
        cli("db", "stop", env=env)


def test_run_exports_from_a_database_without_the_request_table_and_writes_nothing(database_url, tmp_path):
    replica = database_beside(database_url, "replica_without_requests")
    with psycopg.connect(replica, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS export_requests, export_watermarks, export_platform_schema CASCADE")
        seed(conn, 200, ("users",))
        tables_before = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    output = tmp_path / "Données" / "users replica.csv"
    output.parent.mkdir()
    done = cli("run", "users", "--columns", "id,email", "--output", str(output), env={**os.environ, DATABASE_URL_ENV: replica})
    assert "rows=200 " in done.stdout and done.stderr == ""
    with psycopg.connect(replica) as conn:
        assert file_rows(conn, "users", ["id", "email"], "csv", output) == db_rows(conn, "users", ["id", "email"])
        assert conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall() == tables_before


def test_errors_say_what_is_wrong_without_python_class_paths_or_tracebacks(database_url, tmp_path):
    empty = database_beside(database_url, "replica_empty")
    with psycopg.connect(empty, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS users, export_requests, export_watermarks, export_platform_schema CASCADE")
    env = {**os.environ, DATABASE_URL_ENV: empty}
    for args, says in [
        (["run", "users", "--output", str(tmp_path / "u.csv")], 'relation "users" does not exist'),
        (["status", "1"], "export_requests is not set up in this database: run `export-platform db migrate`"),
        (["list"], "export_requests is not set up in this database"),
    ]:
        done = subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 1 and says in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and not re.search(r"\b(?:[a-z_]\w*\.)+[A-Z]\w*: ", done.stderr), done.stderr
