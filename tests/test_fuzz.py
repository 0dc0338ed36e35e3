"""Fuzzed request rows: whatever an application inserts, the sensor never raises, every row ends
QUEUED with a run request the job accepts or FAILED with a message, and no user text reaches the
SQL except as a bound parameter."""

from __future__ import annotations

import json

import dagster as dg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export_platform.planning import sql
from export_platform.definitions import defs
from export_platform.catalog.export_types import REGISTRY
from export_platform.catalog.formats import ExportFormat
from export_platform.planning.plan import plan_request
from export_platform.planning.values import decode_params
from support.request_rows import row, tick

INJECTION = "x'); DROP TABLE users;--"
# jsonb and text columns cannot hold NUL or lone surrogates, so an application could not insert them.
text = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=40) | st.just(INJECTION)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
filter_names = st.sampled_from(sorted({f.name for t in REGISTRY for f in t.filters})) | text
# Shapes that once stopped the whole queue: signs, Unicode digits, numbers longer than Python reads.
numberish = st.from_regex(r"[+\- ]{0,3}[0-9²٣５.eE]{1,24}", fullmatch=True) | st.integers(4_000, 6_000).map(lambda n: "9" * n)
filter_values = (
    json_values | numberish | st.dates().map(str) | st.just(list(range(20_000))) | st.just(["US"] * 10_001)
)
column_names = st.sampled_from(sorted({c for t in REGISTRY for c in t.columns})) | text
params_objects = st.fixed_dictionaries(
    {},
    optional={
        "filters": st.dictionaries(filter_names, filter_values, max_size=4) | json_values,
        "columns": st.lists(column_names, max_size=5) | json_values,
        "csv": st.fixed_dictionaries({}, optional={"delimiter": text, "quote_char": text, "header": json_values}),
    },
) | json_values
# params as JSON text, as an application's SQL stores it, including JSON that Python's own encoder
# cannot produce and its decoder cannot read: 5,000-digit numbers, nesting thousands deep.
huge_number = st.integers(4_400, 6_000).map(lambda n: "9" * n)
params_json = (
    params_objects.map(json.dumps)
    | st.builds(lambda name, digits: json.dumps({"filters": {name: 0}}).replace("0", digits), filter_names, huge_number)
    | st.integers(900, 5_000).map(lambda depth: "[" * depth + "]" * depth)
    | st.builds(lambda depth: '{"filters": {"plate_number": ' + "[" * depth + "]" * depth + "}}", st.integers(900, 5_000))
)


@pytest.fixture
def clean_queue(db):
    db.execute("UPDATE export_requests SET status = 'CANCELLED' WHERE status IN ('PENDING', 'QUEUED')")


def strings_in(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in strings_in(k) + strings_in(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    export_type=st.sampled_from(REGISTRY.names()) | text,
    fmt=st.sampled_from([f.value for f in ExportFormat] + [f.name for f in ExportFormat]) | text,
    params_text=params_json,
)
def test_any_request_row_ends_in_an_actionable_state(
    db, database_url, instance, store, clean_queue, export_type, fmt, params_text
):
    request_id = db.execute(
        "INSERT INTO export_requests (export_type, format, params, requested_by) "
        "VALUES (%s, %s, %s::jsonb, 'fuzz') RETURNING id",
        (export_type, fmt, params_text),
    ).fetchone()[0]
    result = tick(instance, store, database_url)  # must not raise
    final = row(db, request_id)
    if final["status"] == "FAILED":
        assert final["error"] and ": " in final["error"]
        assert [r for r in result.run_requests if r.run_key == final["run_key"]] == []
        return
    assert final["status"] == "QUEUED"
    [run_request] = [r for r in result.run_requests if r.run_key == final["run_key"]]
    assert dg.validate_run_config(defs.resolve_job_def(run_request.job_name), run_request.run_config)
    params = decode_params(params_text)
    plan = plan_request(export_type, fmt, params)
    statements = sql.select_statement(plan) + sql.count_statement(plan) + (sql.bind_statement(plan) or "")
    identifiers = set(plan.columns) | {c.column for c in plan.conditions} | {plan.relation}
    for value in strings_in((params or {}).get("filters")):
        if len(value) >= 4 and value not in identifiers and value not in ("true", "text", "date"):
            assert value not in statements
