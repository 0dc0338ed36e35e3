"""Recurring exports from the YAML file, and incremental exports with no gap and no duplicate."""

from __future__ import annotations


import dagster as dg
import polars as pl
import psycopg
import pytest
import yaml
from psycopg.conninfo import make_conninfo

from export_platform.definitions import defs
from export_platform.catalog.export_types import REGISTRY
from export_platform.naming import INCREMENTAL_TAG, SCHEDULE_TAG
from export_platform.run_failures import root_message
from export_platform.resources.storage import OUTPUT_FOLDERS_ENV
from export_platform.tooling.instance import INSTANCE_YAML
from export_platform.resources.postgres import PostgresResource
from export_platform.schedules.recurring import RecurringExportError, build_recurring_schedules, load_recurring_exports
from support.readback import published_path, run_incremental, run_job


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
    assert (daily.cron_schedule, daily.execution_timezone, daily.job_name) == ("0 6 * * *", "America/New_York", REGISTRY.get("users").job_name)
    # The samples ship stopped: a dev instance left running must not write files every hour.
    assert {s.default_status for s in schedules.values()} == {dg.DefaultScheduleStatus.STOPPED}
    for schedule in schedules.values():
        run_request = evaluate(schedule)
        assert run_request.tags[SCHEDULE_TAG] == schedule.name.removeprefix("recurring_")
        assert dg.validate_run_config(defs.resolve_job_def(schedule.job_name), run_request.run_config)
    config = evaluate(schedules["recurring_ezpass_changes_hourly"]).run_config["ops"]["plan_ezpass_transactions"]["config"]
    assert config["incremental"] == {"column": "updated_at", "key": "ezpass_changes_hourly"}
    # The queue runs one run per incremental key at a time (dagster.yaml).
    assert evaluate(schedules["recurring_ezpass_changes_hourly"]).tags[INCREMENTAL_TAG] == "ezpass_changes_hourly"
    assert INCREMENTAL_TAG not in evaluate(daily).tags


def test_each_recurring_entry_is_planned_once(monkeypatch):
    # An incremental entry was planned a second time from the first plan's output.
    from export_platform.planning import plan as planning

    planned, check_filters = [], planning.check_filters
    monkeypatch.setattr(planning, "check_filters", lambda export_type, filters: planned.append(export_type.name)
                        or check_filters(export_type, filters))
    entries = load_recurring_exports()
    assert any(e.incremental for e in entries)
    build_recurring_schedules()
    assert planned == [e.export_type for e in entries]


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
    [export_type] = [t.name for t in REGISTRY if t.job_name == schedule.job_name]
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


def exported_ids(result) -> list[int]:
    return pl.read_parquet(published_path(result))["id"].to_list()


def test_incremental_runs_have_no_gap_and_no_duplicate_with_concurrent_writers(incremental_db, resources):
    url, overrides = incremental_db
    config = {"format": "parquet", "columns": ["id", "updated_at"], "incremental": {"column": "updated_at", "key": "inc"}}
    insert = "INSERT INTO users (id, name, updated_at) VALUES (%s, 'late', now())"
    with psycopg.connect(url) as slow_writer, psycopg.connect(url, autocommit=True) as app:
        slow_writer.execute(insert, (100_001,))  # stamped now(), committed only after run 1
        first = run_incremental(config, {**resources, **overrides})
        slow_writer.commit()
        app.execute(insert, (100_002,))
        second = run_incremental(config, {**resources, **overrides})
        third = run_incremental(config, {**resources, **overrides})
        # A NULL mark is never exported, a future one (id 5: 2099) not before its time.
        all_ids = [r[0] for r in app.execute("SELECT id FROM users WHERE updated_at <= now() ORDER BY id")]

    assert exported_ids(first) == [i for i in range(1, 501) if i not in (5, 7)]
    assert exported_ids(second) == [100_001, 100_002]
    assert exported_ids(third) == []
    runs = exported_ids(first) + exported_ids(second) + exported_ids(third)
    assert sorted(runs) == all_ids and len(set(runs)) == len(runs)
    # A run with no new row still fixes its upper bound, which its run page shows as the mark.
    marks = [_published_metadata(run)["high_water"].value for run in (second, third)]
    assert all(marks) and marks[0] < marks[1]


def _published_metadata(result) -> dict:
    [output] = [e for e in result.all_events if e.is_successful_output and e.step_key == "publish_export"]
    return output.event_specific_data.metadata


def test_a_failed_incremental_run_does_not_advance_the_mark(incremental_db, resources, tmp_path, monkeypatch):
    url, overrides = incremental_db
    config = {"format": "csv", "columns": ["id"], "incremental": {"column": "updated_at", "key": "inc_fail"}}
    monkeypatch.setenv(OUTPUT_FOLDERS_ENV, str(tmp_path))  # allowed: the run fails writing, not at the check
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    failed = run_incremental({**config, "output_path": str(blocked / "x.csv")}, {**resources, **overrides})
    assert not failed.success
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM export_watermarks WHERE key = 'inc_fail'").fetchone()[0] == 0
    assert len(pl.read_csv(published_path(run_incremental(config, {**resources, **overrides})))) == 498


def failure_message(result) -> str:
    return "; ".join(root_message(e.step_failure_data.error) for e in result.all_events if e.is_step_failure)


def test_a_transaction_that_only_read_before_the_run_and_writes_after_it_is_exported_next(incremental_db, resources):
    # Its now() is fixed when it began, before the run; it takes a transaction id only when it writes.
    url, overrides = incremental_db
    config = {"format": "parquet", "columns": ["id"], "incremental": {"column": "updated_at", "key": "inc_reader"}}
    with psycopg.connect(url) as reader:
        reader.execute("SELECT count(*) FROM users")
        first = run_incremental(config, {**resources, **overrides})
        reader.execute("INSERT INTO users (id, name, updated_at) VALUES (100_003, 'reader', now())")
        reader.commit()
    second = run_incremental(config, {**resources, **overrides})
    assert 100_003 not in exported_ids(first) and len(exported_ids(first)) == 498
    assert exported_ids(second) == [100_003]


def test_rows_newer_than_the_margin_wait_for_the_next_run(incremental_db, resources):
    url, overrides = incremental_db
    config = {"format": "parquet", "columns": ["id"], "incremental": {"column": "updated_at", "key": "inc_margin"}}
    with psycopg.connect(url, autocommit=True) as app:
        app.execute("INSERT INTO users (id, name, updated_at) VALUES (100_004, 'recent', now())")
    held_back = {**resources, **overrides, "postgres": PostgresResource(url=url, incremental_margin_seconds=3600)}
    first = run_incremental(config, held_back)
    assert 100_004 not in exported_ids(first) and len(exported_ids(first)) == 498
    assert exported_ids(run_incremental(config, {**resources, **overrides})) == [100_004]


@pytest.fixture
def reader_url(incremental_db):
    """A login role that may read `users` and nothing more: no pg_read_all_stats, not a superuser."""
    url, _ = incremental_db
    role = "export_reader_no_stats"
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER")
        conn.execute(f"GRANT SELECT ON users TO {role}")
    yield make_conninfo(url, user=role)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")


def test_an_incremental_export_is_refused_to_a_role_that_cannot_see_other_sessions(incremental_db, resources, reader_url):
    url, overrides = incremental_db
    config = {"format": "csv", "columns": ["id"], "incremental": {"column": "updated_at", "key": "inc_role"}}
    as_reader = {**resources, **overrides, "postgres": PostgresResource(url=reader_url, incremental_margin_seconds=0)}
    with psycopg.connect(url) as other:
        other.execute("SELECT 1")  # a session in a transaction, whose xact_start the role cannot see
        refused = run_incremental(config, as_reader)
    assert not refused.success
    assert failure_message(refused).startswith("incremental export refused: the database role cannot see")
    assert "grant it pg_read_all_stats" in failure_message(refused)
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM export_watermarks WHERE key = 'inc_role'").fetchone()[0] == 0
        conn.execute("GRANT pg_read_all_stats TO export_reader_no_stats")
    assert len(pl.read_csv(published_path(run_incremental(config, as_reader)))) == 498


def test_an_incremental_run_without_its_key_tag_is_refused(incremental_db, resources):
    # Without the tag the queue's one-run-per-key limit would not hold it back.
    url, overrides = incremental_db
    config = {"format": "csv", "columns": ["id"], "incremental": {"column": "updated_at", "key": "inc_untagged"}}
    for tags in (None, {INCREMENTAL_TAG: "another_key"}):
        refused = run_job("users", config, {**resources, **overrides}, tags=tags)
        assert not refused.success
        assert failure_message(refused).startswith(f"an incremental run must carry the tag {INCREMENTAL_TAG}=inc_untagged")


def test_the_run_queue_holds_a_second_run_of_one_incremental_key():
    # Dagster's own counter, as the queue daemon uses it, over the limits in dagster.yaml.
    from dagster._utils.tags import TagConcurrencyLimitsCounter

    limits = yaml.safe_load(INSTANCE_YAML.read_text())["run_coordinator"]["config"]["tag_concurrency_limits"]
    tags = evaluate(defs.get_schedule_def("recurring_ezpass_changes_hourly")).tags
    job_name = REGISTRY.get("ezpass_transactions").job_name
    running = dg.DagsterRun(job_name=job_name, run_id="a" * 36, tags=tags)
    counter = TagConcurrencyLimitsCounter(limits, [running])
    assert counter.is_blocked(dg.DagsterRun(job_name=job_name, run_id="b" * 36, tags=tags))
    other_key = {**tags, INCREMENTAL_TAG: "another_key", SCHEDULE_TAG: "another_key"}
    assert not counter.is_blocked(dg.DagsterRun(job_name=job_name, run_id="c" * 36, tags=other_key))
