"""Statements hold only registry identifiers; user values travel as bound parameters."""

from __future__ import annotations

import psycopg

from export_platform.planning import sql
from export_platform.planning.plan import plan_export

INJECTION = "x'); DROP TABLE users;--"


def test_user_values_never_reach_the_statement_text():
    plan = plan_export(
        "ezpass_transactions",
        "csv",
        {"plate_number": [INJECTION, "O'Neil"], "status": INJECTION, "from_amount": "1.5", "vin": "$1"},
    )
    statements = [sql.select_statement(plan), sql.count_statement(plan), sql.bind_statement(plan)]
    for statement in statements:
        assert "DROP" not in statement and "O'Neil" not in statement and "1.5" not in statement
    assert sql.parameters(plan) == ('["x\'); DROP TABLE users;--", "O\'Neil"]', '["x\'); DROP TABLE users;--"]', "1.5", '["$1"]')
    assert sql.bind_statement(plan).count("set_config") == 4


def test_identifiers_are_quoted_and_order_is_the_declared_key():
    plan = plan_export("users", "csv", {"country_code": "US"}, ["email", "id"])
    assert sql.select_statement(plan) == (
        'SELECT "email", "id" FROM "users" WHERE "country_code" = ANY(ARRAY(SELECT '
        "jsonb_array_elements_text(current_setting('export_platform.p0')::jsonb))::text[]) ORDER BY \"id\""
    )


def test_no_filters_means_no_bind_statement():
    plan = plan_export("users", "parquet")
    assert sql.bind_statement(plan) is None
    assert sql.count_statement(plan) == 'SELECT count(*) FROM "users"'


def test_a_date_range_of_the_ledger_is_read_through_its_index(db):
    """The sample ledger is requested by posting date; a seq scan per request made a burst of ten
    small requests wait on the server (benchmarks/RESULTS.md, issue 11)."""
    plan = plan_export("ledger_postings", "csv", {"from_posting_date": "2023-01-03", "to_posting_date": "2023-01-04"})
    with db.transaction():
        psycopg.RawCursor(db).execute(sql.bind_statement(plan), sql.parameters(plan))  # $n placeholders, as ADBC's
        db.execute("SET LOCAL enable_seqscan = off")  # a 3,000-row table would be scanned anyway
        for statement in (sql.count_statement(plan), sql.select_statement(plan)):
            explained = "\n".join(row[0] for row in db.execute("EXPLAIN " + statement))
            assert "ledger_postings_posting_date" in explained, explained
