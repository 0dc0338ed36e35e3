"""Recurring exports from the YAML file, and incremental exports with no gap and no duplicate."""

from __future__ import annotations


import dagster as dg
import polars as pl
import psycopg
import pytest

from export_platform.definitions import defs
from export_platform.ops.export import SCHEDULE_TAG
from export_platform.resources.postgres import PostgresResource
from export_platform.resources.requests import RequestStore
from export_platform.sample_data import seed
from export_platform.schedules.recurring import RecurringExportError, build_recurring_schedules
from readback import database_beside, published_path, run_job


@pytest.fixture(autouse=True)
def fresh_marks(db):
    db.execute("DELETE FROM export_watermarks")


def evaluate(schedule: dg.ScheduleDefinition) -> dg.RunRequest:
    with dg.build_schedule_context() as context:
        [run_request] = schedule.evaluate_tick(context).run_requests
    return run_request


def test_every_declared_recurring_export_is_a_schedule_of_its_job():
    schedules = {s.name: s for s in defs.schedules if s.name.startswith("recurring_")}
    assert set(schedules) == {"recurring_us_users_daily", "recurring_ezpass_changes_hourly", "recurring_ledger_weekly"}
    daily = schedules["recurring_us_users_daily"]
    assert (daily.cron_schedule, daily.execution_timezone, daily.job_name) == ("0 6 * * *", "America/New_York", "export_users")
    # The samples ship stopped: a dev instance left running must not write files every hour.
    assert {s.default_status for s in schedules.values()} == {dg.DefaultScheduleStatus.STOPPED}
    for schedule in schedules.values():
        run_request = evaluate(schedule)
        assert run_request.tags[SCHEDULE_TAG] == schedule.name.removeprefix("recurring_")
        assert dg.validate_run_config(defs.resolve_job_def(schedule.job_name), run_request.run_config)
    config = evaluate(schedules["recurring_ezpass_changes_hourly"]).run_config["ops"]["plan_ezpass_transactions"]["config"]
    assert config["incremental"] == {"column": "updated_at", "key": "ezpass_changes_hourly"}


def test_an_entry_without_enabled_runs_once_deployed(tmp_path):
    path = tmp_path / "recurring.yaml"
    path.write_text("- {name: nightly, export_type: users, cron: '0 1 * * *'}\n- {name: paused, export_type: users, cron: '0 1 * * *', enabled: false}\n")
    assert [s.default_status for s in build_recurring_schedules(path)] == [
        dg.DefaultScheduleStatus.RUNNING, dg.DefaultScheduleStatus.STOPPED
    ]


@pytest.mark.parametrize("name", ["us_users_daily", "ezpass_changes_hourly", "ledger_weekly"])
def test_every_scheduled_run_executes_into_its_dated_folder(db, resources, storage_root, name):
    schedule = defs.get_schedule_def(f"recurring_{name}")
    run_request = evaluate(schedule)
    export_type = schedule.job_name.removeprefix("export_")
    [op_config] = run_request.run_config["ops"].values()
    result = run_job(export_type, op_config["config"], resources, tags=run_request.tags)
    assert result.success
    path = published_path(result)
    assert path.parent.parent == storage_root / "schedules" / name
    published = result.output_for_node("publish_export")
    assert published.rows > 0 and published.bytes == path.stat().st_size


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{name: a, export_type: invoices, cron: '0 * * * *'}", "'a': export_type: unknown export type"),
        ("{name: b, export_type: users, cron: '0 * * * *', params: {filters: {bogus: 1}}}", "'b': filters.bogus"),
        ("{name: c, export_type: users, cron: '0 * * * *', timezone: Mars/Olympus}", "'c'"),
        ("{name: d, export_type: users, cron: 'every hour'}", "'d': invalid cron"),
        ("{name: e, export_type: users, cron: '0 * * * *', incremental: {column: nope}}", "'e': incremental.column"),
        ("{name: f, export_type: users, cron: '0 * * * *', colour: red}", "colour"),
    ],
)
def test_a_bad_entry_fails_loading_with_its_name(tmp_path, entry, message):
    path = tmp_path / "recurring.yaml"
    path.write_text(f"- {entry}\n")
    with pytest.raises(RecurringExportError, match=message.replace("(", r"\(")):
        build_recurring_schedules(path)


@pytest.fixture
def incremental_db(database_url, storage_root) -> tuple[str, dict]:
    url = database_beside(database_url, "incremental_check")
    with psycopg.connect(url, autocommit=True) as conn:
        seed(conn, 500, ("users",))
    store = RequestStore(url=url)
    store.migrate()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM export_watermarks")
    return url, {"postgres": PostgresResource(url=url), "requests": store}


def exported_ids(result) -> list[int]:
    return pl.read_parquet(published_path(result))["id"].to_list()


def test_incremental_runs_have_no_gap_and_no_duplicate_with_concurrent_writers(incremental_db, resources):
    url, overrides = incremental_db
    config = {"format": "parquet", "columns": ["id", "updated_at"], "incremental": {"column": "updated_at", "key": "inc"}}
    insert = "INSERT INTO users (id, name, updated_at) VALUES (%s, 'late', now())"
    with psycopg.connect(url) as slow_writer, psycopg.connect(url, autocommit=True) as app:
        slow_writer.execute(insert, (100_001,))  # stamped now(), committed only after run 1
        first = run_job("users", config, {**resources, **overrides})
        slow_writer.commit()
        app.execute(insert, (100_002,))
        second = run_job("users", config, {**resources, **overrides})
        third = run_job("users", config, {**resources, **overrides})
        # A NULL mark is never exported, a future one (id 5: 2099) not before its time.
        all_ids = [r[0] for r in app.execute("SELECT id FROM users WHERE updated_at <= now() ORDER BY id")]

    assert exported_ids(first) == [i for i in range(1, 501) if i not in (5, 7)]
    assert exported_ids(second) == [100_001, 100_002]
    assert exported_ids(third) == []
    runs = exported_ids(first) + exported_ids(second) + exported_ids(third)
    assert sorted(runs) == all_ids and len(set(runs)) == len(runs)


def test_a_failed_incremental_run_does_not_advance_the_mark(incremental_db, resources, tmp_path):
    url, overrides = incremental_db
    config = {"format": "csv", "columns": ["id"], "incremental": {"column": "updated_at", "key": "inc_fail"}}
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    failed = run_job("users", {**config, "output_path": str(blocked / "x.csv")}, {**resources, **overrides})
    assert not failed.success
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM export_watermarks WHERE key = 'inc_fail'").fetchone()[0] == 0
    assert len(pl.read_csv(published_path(run_job("users", config, {**resources, **overrides})))) == 498
