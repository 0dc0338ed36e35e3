"""Request checking, without a database: every bad input names its field."""

from __future__ import annotations

import pytest

from export_platform.config import CsvOptions
from export_platform.formats import ExportFormat
from export_platform.planning import RequestError, plan_export
from export_platform.registry import Operator

INJECTION = "x'); DROP TABLE users;--"


def error_for(*args, **kwargs) -> RequestError:
    with pytest.raises(RequestError) as caught:
        plan_export(*args, **kwargs)
    return caught.value


@pytest.mark.parametrize(
    ("args", "kwargs", "field", "words"),
    [
        (("nope", "csv"), {}, "export_type", "unknown export type 'nope'"),
        ((INJECTION, "csv"), {}, "export_type", "unknown export type"),
        (("users", "xls"), {}, "format", "unknown format 'xls'"),
        (("users", None), {}, "format", "unknown format"),
        (("users", "csv"), {"columns": ["id", "password"]}, "columns", "unknown column 'password'"),
        (("users", "csv"), {"columns": [INJECTION]}, "columns", "unknown column"),
        (("users", "csv"), {"columns": ["id", "id"]}, "columns", "listed twice"),
        (("users", "csv"), {"columns": [1]}, "columns", "list of column names"),
        (("users", "csv"), {"filters": {"bogus": "x"}}, "filters.bogus", "unknown filter"),
        (("users", "csv"), {"filters": {INJECTION: "x"}}, f"filters.{INJECTION}", "unknown filter"),
        (("users", "csv"), {"filters": ["country_code"]}, "filters", "expected an object"),
        (("users", "csv"), {"filters": {"country_code": 5}}, "filters.country_code", "expected text"),
        (("users", "csv"), {"filters": {"country_code": []}}, "filters.country_code", "empty list"),
        (("users", "csv"), {"filters": {"lifetime_value_min": "abc"}}, "filters.lifetime_value_min", "decimal"),
        (("users", "csv"), {"filters": {"lifetime_value_min": "NaN"}}, "filters.lifetime_value_min", "finite"),
        (("users", "csv"), {"filters": {"lifetime_value_min": True}}, "filters.lifetime_value_min", "decimal"),
        (("users", "csv"), {"filters": {"lifetime_value_min": ["1"]}}, "filters.lifetime_value_min", "single value"),
        (("users", "csv"), {"filters": {"signup_date_from": "2024-13-01"}}, "filters.signup_date_from", "YYYY-MM-DD"),
        (("users", "csv"), {"filters": {"signup_date_from": INJECTION}}, "filters.signup_date_from", "YYYY-MM-DD"),
        (("ezpass_transactions", "csv"), {"filters": {"transaction_id": "1,x"}}, "filters.transaction_id", "whole number"),
        (("ezpass_transactions", "csv"), {"filters": {"driver_id": 2**63}}, "filters.driver_id", "whole number"),
        (("ezpass_transactions", "csv"), {"filters": {"vin": "a\x00b"}}, "filters.vin", "NUL"),
        (("ezpass_transactions", "csv"), {"filters": {"vin": "[1,"}}, "filters.vin", "JSON list"),
        (
            ("users", "csv"),
            {"filters": {"lifetime_value_min": "10", "lifetime_value_max": "9.99"}},
            "filters.lifetime_value_max",
            "reversed range",
        ),
        (
            ("ezpass_transactions", "csv"),
            {"filters": {"from_transaction_date": "2024-02-01", "to_transaction_date": "2024-01-31"}},
            "filters.to_transaction_date",
            "reversed range",
        ),
        (("users", "csv"), {"csv": CsvOptions(delimiter=",,")}, "csv.delimiter", "one character"),
        (("users", "csv"), {"csv": CsvOptions(delimiter="\n")}, "csv.delimiter", "line break"),
        (("users", "csv"), {"csv": CsvOptions(quote_char=",")}, "csv.quote_char", "differ"),
    ],
)
def test_bad_request_names_the_field(args, kwargs, field, words):
    error = error_for(*args, **kwargs)
    assert error.field == field
    assert words in error.message
    assert str(error).startswith(f"{field}: ")


def test_multi_value_filters_accept_lists_json_and_comma_separated_text():
    plan = plan_export(
        "ezpass_transactions",
        "csv.gz",
        {"entry_plaza": "GWB,Bayonne", "plate_number": '["A,1", "B"]', "transaction_id": ["7", 8], "status": "POSTED"},
    )
    assert plan.format is ExportFormat.csv_gz
    assert plan.filters == {
        "entry_plaza": ["GWB", "Bayonne"],
        "plate_number": ["A,1", "B"],
        "transaction_id": [7, 8],
        "status": ["POSTED"],
    }
    by_column = {c.column: c for c in plan.conditions}
    assert by_column["transaction_id"].values == ("7", "8")
    assert by_column["status"].multi and by_column["status"].op is Operator.EQ


def test_values_are_normalised_and_ranges_may_be_equal():
    plan = plan_export(
        "users", "csv_gz", {"lifetime_value_min": 10, "lifetime_value_max": "10.00", "signup_date_to": None}
    )
    assert plan.filters == {"lifetime_value_min": "10", "lifetime_value_max": "10.00"}
    assert plan.format is ExportFormat.csv_gz


def test_default_columns_and_chosen_order():
    assert plan_export("users", "csv").columns[:2] == ("id", "name")
    assert plan_export("users", "csv", columns="email, id").columns == ("email", "id")
