"""Runs of one incremental key, submitted together to a real daemon's queue, run one at a time."""

from __future__ import annotations

from collections import Counter

import dagster as dg
import polars as pl
import psycopg
import pytest

from support.daemon_stack import daemon_stack, files_in, wait_for
from export_platform.catalog.export_types import REGISTRY
from export_platform.naming import INCREMENTAL_TAG

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(database_url, tmp_path_factory):
    with daemon_stack(database_url, tmp_path_factory.mktemp("incremental_daemon"), {"ezpass_transactions": 3_000}) as stack:
        yield stack


def test_two_runs_of_one_incremental_key_never_export_the_same_rows(stack, graphql):  # noqa: F811
    config = {"format": "parquet", "columns": ["id"], "incremental": {"column": "updated_at", "key": "overlap"}}
    run_config = {"ops": {"plan_ezpass_transactions": {"config": config}}}
    run_ids = [
        graphql.submit_job_execution(REGISTRY.get("ezpass_transactions").job_name, run_config=run_config, tags={INCREMENTAL_TAG: "overlap"})
        for _ in range(2)
    ]

    def finished():
        records = [stack.instance.get_run_record_by_id(run_id) for run_id in run_ids]
        return all(r.dagster_run.is_finished for r in records) and records

    records = wait_for(finished, what="both runs to finish")
    assert [r.dagster_run.status for r in records] == [dg.DagsterRunStatus.SUCCESS] * 2
    exported = [
        i for run_id in run_ids for path in files_in(stack.exports) if run_id[:8] in path.name
        for i in pl.read_parquet(path)["id"].to_list()
    ]
    with psycopg.connect(stack.app_url) as app:
        below_mark = app.execute(
            "SELECT id FROM ezpass_transactions WHERE updated_at < (SELECT high_water FROM export_watermarks WHERE key = 'overlap')"
        ).fetchall()
    assert [i for i, n in Counter(exported).items() if n > 1] == []
    assert sorted(exported) == sorted(i for (i,) in below_mark) and len(exported) > 0
    first, second = sorted(records, key=lambda r: r.start_time)
    assert second.start_time >= first.end_time  # the queue held the second back
