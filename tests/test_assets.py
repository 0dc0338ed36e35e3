"""Exports in Dagster's Asset Catalog: each type an asset downstream of its source relation, every
published file a materialization with its numbers and link, and the row-count check per export."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import unquote, urlparse

import dagster as dg
import pytest

from export_platform import assets
from export_platform.catalog.export_types import REGISTRY
from export_platform.catalog.registry import ExportType, Filter, Registry, ValueType
from export_platform.definitions import defs
from export_platform.links import PUBLIC_URL_ENV, SIGNING_KEY_ENV
from export_platform.naming import FORMAT_TAG, REQUEST_ID_TAG, REQUESTED_BY_TAG, SCHEDULE_TAG
from support.readback import db_rows, run_job
from support.request_rows import insert, row

USERS = assets.export_key("users")
CHECK = dg.AssetCheckKey(USERS, assets.ROWS_CHECK)


def test_every_export_type_is_an_asset_downstream_of_its_source_with_its_check():
    graph = defs.get_repository_def().asset_graph
    for export_type in REGISTRY:
        node = graph.get(assets.export_key(export_type.name))
        assert node.parent_keys == {dg.AssetKey(["postgres", export_type.relation])}
        assert node.kinds == {"polars"} and node.group_name == "exports"
        assert node.description.startswith(export_type.description)
        schema = node.metadata["dagster/column_schema"]
        assert [c.name for c in schema.columns] == list(export_type.columns)
        assert graph.get(dg.AssetKey(["postgres", export_type.relation])).kinds == {"postgres"}
        assert dg.AssetCheckKey(node.key, assets.ROWS_CHECK) in graph.asset_check_keys
    assert not any(graph.get(k).is_materializable for k in graph.get_all_asset_keys())  # the jobs publish, not Dagster


def test_owners_filters_and_shared_sources_come_from_the_declarations():
    invoices = ExportType("invoices", "billing.invoices", ("id", "status"), ("id",),
                          filters=(Filter("status", "status", ValueType.TEXT),), owners=("team:billing", "ana@example.com"))
    paid = ExportType("paid_invoices", "billing.invoices", ("id",), ("id",))
    specs = {s.key: s for s in assets.catalog_specs(Registry([invoices, paid]))}
    assert set(specs) == {dg.AssetKey(["postgres", "billing", "invoices"]), assets.export_key("invoices"),
                          assets.export_key("paid_invoices")}  # one source for both
    assert specs[assets.export_key("invoices")].owners == ["team:billing", "ana@example.com"]
    columns = specs[assets.export_key("invoices")].metadata["dagster/column_schema"].columns
    assert [(c.name, c.description) for c in columns] == [("id", None), ("status", "filters: status")]


def published_path(result: dg.ExecuteInProcessResult) -> Path:
    return Path(unquote(urlparse(result.output_for_node("publish_export").uri).path))


def _materializations(instance, key=USERS) -> list[dg.EventLogRecord]:
    return list(instance.fetch_materializations(key, limit=100).records)


def _metadata(record: dg.EventLogRecord) -> dict:
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


@pytest.fixture
def serving(monkeypatch):
    monkeypatch.setenv(PUBLIC_URL_ENV, "https://exports.example.com")
    monkeypatch.setenv(SIGNING_KEY_ENV, "a-test-signing-key-of-enough-bytes")


def test_each_published_file_is_a_materialization_with_its_numbers_link_and_passed_check(
    db, resources, instance, serving
):
    request_id = insert(db, "users", "parquet", user="alice@example.com", status="QUEUED")
    launchpad = run_job("users", {"format": "csv", "filters": {"country_code": "US"}}, resources, instance=instance)
    request = run_job("users", {"format": "parquet"}, resources, instance=instance,
                      tags={REQUEST_ID_TAG: str(request_id), REQUESTED_BY_TAG: "alice@example.com"})
    assert launchpad.success and request.success

    records = _materializations(instance)
    assert [r.run_id for r in records] == [request.run_id, launchpad.run_id]  # newest first
    expected = {launchpad.run_id: len(db_rows(db, "users", ["id"], "WHERE country_code = 'US'")),
                request.run_id: len(db_rows(db, "users", ["id"]))}
    for record, result in zip(records, (request, launchpad)):
        found, path = _metadata(record), published_path(result)
        assert found["dagster/row_count"] == found["snapshot_rows"] == expected[record.run_id] > 0
        assert found["bytes"] == path.stat().st_size
        assert found["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert found["seconds"] > 0 and found["rows_per_second"] > 0
        link = urlparse(found["link"])
        assert (link.scheme, link.netloc) == ("https", "exports.example.com") and "sig=" in link.query
        assert link.path.endswith(path.name)
    launchpad_found, request_found = _metadata(records[1]), _metadata(records[0])
    assert launchpad_found["format"] == "csv" and launchpad_found["filters"] == {"country_code": ["US"]}
    assert request_found["requested_by"] == f"request {request_id} by alice@example.com"
    assert request_found["status_page"].startswith(f"https://exports.example.com/requests/{request_id}?")
    assert row(db, request_id)["sha256"] == request_found["sha256"]
    # The Runs list shows the format of a Launchpad run, whose format is only in its config.
    assert instance.get_run_by_id(launchpad.run_id).tags[FORMAT_TAG] == "csv"

    history = instance.event_log_storage.get_asset_check_execution_history(CHECK, limit=10)
    assert [(h.run_id, h.status.value) for h in history] == [(request.run_id, "SUCCEEDED"), (launchpad.run_id, "SUCCEEDED")]
    evaluation = history[0].event.dagster_event.event_specific_data
    assert {k: v.value for k, v in evaluation.metadata.items()} == {
        "rows_written": expected[request.run_id], "snapshot_rows": expected[request.run_id]}


def test_a_file_without_a_signed_link_says_how_to_get_it(resources, instance, monkeypatch):
    monkeypatch.delenv(PUBLIC_URL_ENV, raising=False)
    result = run_job("users", {"format": "csv", "columns": ["id"]}, resources, instance=instance,
                     tags={SCHEDULE_TAG: "us_users_daily"})  # a schedule's run reports as any other
    found = _metadata(_materializations(instance)[0])
    assert "EXPORT_PLATFORM_PUBLIC_URL" in found["link"] and "make dev" in found["link"]
    assert found["file"] == str(published_path(result))  # a path as typed, not a percent-encoded URI
    assert found["requested_by"] == "schedule us_users_daily"


def test_a_row_count_that_differs_from_the_snapshot_fails_the_check_and_publishes_nothing(
    resources, instance, storage_root, monkeypatch
):
    from export_platform.ops import extract as export

    staged = export.StagedFile
    monkeypatch.setattr(export, "StagedFile", lambda path, rows, *rest: staged(path, rows - 1, *rest))
    before = sorted(storage_root.rglob("*"))
    result = run_job("users", {"format": "csv", "columns": ["id"]}, resources, instance=instance)
    assert not result.success
    assert _materializations(instance) == [] and sorted(storage_root.rglob("*")) == before
    [failed] = instance.event_log_storage.get_asset_check_execution_history(CHECK, limit=10)
    evaluation = failed.event.dagster_event.event_specific_data
    assert failed.status.value == "FAILED" and "file discarded" in evaluation.description
    found = {k: v.value for k, v in evaluation.metadata.items()}
    assert found["rows_written"] == found["snapshot_rows"] - 1 and found["run_id"] == result.run_id


def test_executing_the_check_re_evaluates_the_latest_published_file(resources, instance):
    check_def = assets.build_rows_checks(REGISTRY)
    never = dg.AssetCheckKey(assets.export_key("ledger_postings"), assets.ROWS_CHECK)
    run_job("users", {"format": "csv", "columns": ["id"]}, resources, instance=instance)
    result = dg.materialize([check_def, *assets.catalog_specs(REGISTRY)], instance=instance,
                            selection=dg.AssetSelection.checks(CHECK, never))
    outcomes = {dg.AssetCheckKey(e.asset_key, e.check_name): e for e in result.get_asset_check_evaluations()}
    assert outcomes[CHECK].passed
    assert not outcomes[never].passed and outcomes[never].severity is dg.AssetCheckSeverity.WARN
