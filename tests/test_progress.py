"""A long export reports its progress about once a second, whatever the writer's speed."""

from __future__ import annotations

import time

import dagster as dg
import pytest

from export_platform.resources.postgres import PostgresResource
from export_platform.requests.store import RequestStore
from export_platform.resources.storage import LocalStorage
from export_platform.sinks import xlsx
from support.readback import published_path, run_job, seeded_beside

ROWS = 200_000
# Extra writer time per row: 200,000 rows take at least 10 s on any machine, so the count of
# updates expected below is set by this pace, not by how fast this machine writes xlsx.
EXTRA_SECONDS_PER_ROW = 50e-6
MAX_SECONDS_BETWEEN_UPDATES = 1.5


@pytest.fixture(scope="module")
def big_users(database_url) -> str:
    url = seeded_beside(database_url, "progress_check", ROWS, ("users",))
    RequestStore(url=url).migrate()
    return url


def _slow_writer(monkeypatch) -> None:
    write_rows = xlsx._Sheets._write_rows

    def paced(self, lists):
        write_rows(self, lists)
        time.sleep(len(lists[0]) * EXTRA_SECONDS_PER_ROW)  # stands for a slower machine's work, not a wait

    monkeypatch.setattr(xlsx._Sheets, "_write_rows", paced)


@pytest.mark.slow
def test_xlsx_reports_progress_at_least_every_one_and_a_half_seconds(big_users, tmp_path, monkeypatch):
    _slow_writer(monkeypatch)
    resources = {
        "postgres": PostgresResource(url=big_users),
        "storage": LocalStorage(root=str(tmp_path)),
        "requests": RequestStore(url=big_users),
    }
    with dg.DagsterInstance.ephemeral() as instance:
        result = run_job("users", {"format": "xlsx", "columns": ["id", "email"]}, resources, instance=instance)
        assert result.success
        logs = instance.all_logs(result.run_id)
    assert result.output_for_node("publish_export").rows == ROWS
    published_path(result).unlink()

    updates = [(e.timestamp, e.user_message) for e in logs if e.user_message.startswith("streamed ")]
    written = [int(message.split()[1].replace(",", "")) for _, message in updates]
    assert written == sorted(set(written)) and 0 < written[0] < written[-1] <= ROWS  # moving forward
    step = {e.dagster_event.event_type_value: e.timestamp for e in logs if e.dagster_event and e.step_key == "extract_export"}
    elapsed = step["STEP_OUTPUT"] - step["STEP_START"]
    assert elapsed >= ROWS * EXTRA_SECONDS_PER_ROW
    # One update per 1.5 s of the step, less two for the count before the first row and the workbook's
    # closing after the last.
    assert len(updates) >= elapsed / MAX_SECONDS_BETWEEN_UPDATES - 2, (len(updates), elapsed)
