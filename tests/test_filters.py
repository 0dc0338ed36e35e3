"""Filters are pushed into SQL: each export equals a hand-written query over the same table."""

from __future__ import annotations

import pytest

from support.readback import db_rows, file_rows, published_path, run_job

CASES = [
    # (export type, filters, the equivalent WHERE clause written by hand)
    ("users", {"country_code": ["US", "GB"]}, "WHERE country_code IN ('US', 'GB')"),
    ("users", {"subscription_tier": ["pro"]}, "WHERE subscription_tier = 'pro'"),
    (
        "users",
        {"lifetime_value_min": "100.50", "lifetime_value_max": "5000"},
        "WHERE lifetime_value BETWEEN 100.50 AND 5000",
    ),
    (
        "users",
        {"signup_date_from": "2015-02-01", "signup_date_to": "2015-03-01"},
        "WHERE signup_date BETWEEN '2015-02-01' AND '2015-03-01'",
    ),
    ("users", {"lifetime_value_max": "-0.01"}, "WHERE lifetime_value <= -0.01"),
    (
        "ezpass_transactions",
        {"from_posting_date": "2024-01-01", "to_posting_date": "2024-01-01"},
        "WHERE posting_date = '2024-01-01'",
    ),
    (
        "ezpass_transactions",
        {"from_transaction_date": "2024-01-02", "to_transaction_date": "2024-01-02"},
        "WHERE transaction_date >= '2024-01-02 00:00:00+00' AND transaction_date < '2024-01-03 00:00:00+00'",
    ),
    ("ezpass_transactions", {"from_amount": "10", "to_amount": "10.5"}, "WHERE amount BETWEEN 10 AND 10.5"),
    (
        "ezpass_transactions",
        {"plate_number": ["ABC,123", "T00042C"]},
        "WHERE plate_number IN ('ABC,123', 'T00042C')",
    ),
    ("ezpass_transactions", {"transaction_id": [900000003, 900000030]}, "WHERE transaction_id IN (900000003, 900000030)"),
    ("ezpass_transactions", {"entry_plaza": ["GWB, upper level", "Bayonne"]}, "WHERE entry_plaza IN ('GWB, upper level', 'Bayonne')"),
    ("ezpass_transactions", {"status": ["DISPUTED"], "driver_id": [1102, 1170, 1119]}, "WHERE status = 'DISPUTED' AND driver_id IN (1102, 1170, 1119)"),
    ("ezpass_transactions", {"medallion_no": ["1027M"]}, "WHERE medallion_no = '1027M'"),
    ("ezpass_transactions", {"vin": [""]}, "WHERE vin = ''"),
    ("ledger_postings", {"currency": ["GB"]}, "WHERE currency = 'GB'"),
    ("ledger_postings", {"account_code": ["1000-CASH"], "journal_id": [1, 2, 3]}, "WHERE account_code = '1000-CASH' AND journal_id IN (1, 2, 3)"),
    (
        "ledger_postings",
        {"from_amount": "-9999999999.99", "to_amount": "-1000000"},
        "WHERE amount BETWEEN -9999999999.99 AND -1000000",
    ),
    ("users", {"country_code": ["x'); DROP TABLE users;--"]}, "WHERE false"),
    # As the Launchpad's YAML writes it: one value where a list is allowed (`country_code: US`).
    ("users", {"country_code": "US"}, "WHERE country_code = 'US'"),
    ("ezpass_transactions", {"driver_id": 1102}, "WHERE driver_id = 1102"),
]


@pytest.mark.parametrize(("export_type", "filters", "where"), CASES, ids=[str(c[1]) for c in CASES])
def test_filter_matches_hand_written_sql(db, resources, export_type, filters, where):
    columns = ["id", "updated_at"] if export_type != "ledger_postings" else ["id", "posted_at"]
    result = run_job(export_type, {"format": "csv", "filters": filters, "columns": columns}, resources)
    assert result.success
    expected = db_rows(db, export_type, columns, where)
    assert file_rows(db, export_type, columns, "csv", published_path(result)) == expected
    if where != "WHERE false":
        assert expected, "a filter case that matches nothing proves little"
