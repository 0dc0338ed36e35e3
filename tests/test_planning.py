"""Request checking, without a database: every bad input names its field."""

from __future__ import annotations

import os

import pytest

import dagster as dg

from export_platform.planning.config import CsvOptions, ExportOptions
from export_platform.definitions import defs
from export_platform.catalog.formats import ExportFormat
from export_platform.jobs import run_config_for
from export_platform.planning.key_ranges import KeyRange, PageRange
from export_platform.planning.plan import Incremental, RequestError, plan_config, plan_export, plan_request
from export_platform.planning.streams import Need, Reading, Shown, chunk_ranges
from export_platform.planning.values import decode_params
from export_platform.catalog.export_types import REGISTRY
from export_platform.catalog.registry import Operator

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
        (("users", "csv"), {"options": ExportOptions(csv=CsvOptions(delimiter=",,"))}, "csv.delimiter", "one character"),
        (("users", "csv"), {"options": ExportOptions(csv=CsvOptions(delimiter="\n"))}, "csv.delimiter", "line break"),
        (("users", "csv"), {"options": ExportOptions(csv=CsvOptions(quote_char=","))}, "csv.quote_char", "differ"),
        # One character, but not one byte: the CSV writer would refuse it only inside the run.
        (("users", "csv"), {"options": ExportOptions(csv=CsvOptions(delimiter="é"))}, "csv.delimiter", "ASCII"),
        (("users", "csv"), {"options": ExportOptions(csv=CsvOptions(quote_char="€"))}, "csv.quote_char", "ASCII"),
        (("users", "xlsx"), {"options": ExportOptions(xlsx={"sheet_name": "'Users"})}, "xlsx.sheet_name", "start or end"),
        (("users", "xlsx"), {"options": ExportOptions(xlsx={"sheet_name": "Users'"})}, "xlsx.sheet_name", "start or end"),
        # Signs and digits that str.isdigit() or int() would let through.
        (("ezpass_transactions", "csv"), {"filters": {"driver_id": "+-5"}}, "filters.driver_id", "whole number"),
        (("ezpass_transactions", "csv"), {"filters": {"driver_id": "²"}}, "filters.driver_id", "whole number"),
        (("ezpass_transactions", "csv"), {"filters": {"driver_id": "9" * 5000}}, "filters.driver_id", "whole number"),
        (("users", "csv"), {"filters": {"lifetime_value_min": "١٢"}}, "filters.lifetime_value_min", "decimal"),
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


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"csv": {"quote_style": "sometimes"}}, "csv.quote_style", "necessary"),
        ({"csv": {"line_terminator": "cr"}}, "csv.line_terminator", "lf"),
        ({"csv": {"bogus": 1}}, "csv.bogus", "not permitted"),
        ({"csv": "semicolons"}, "csv", "dictionary"),
        ({"csv": {"date_format": "%Q"}}, "csv.date_format", "strftime"),
        ({"csv": {"timestamp_format": "%Y-%m-%d %"}}, "csv.timestamp_format", "strftime"),
        ({"csv": {"null_value": "a,b"}}, "csv.null_value", "delimiter"),
        ({"time_zone": "Mars/Olympus_Mons"}, "time_zone", "unknown time zone"),
        ({"time_zone": 5}, "time_zone", "string"),
        ({"labels": {"password": "Password"}}, "labels.password", "not an exported column"),
        ({"labels": {"email": " "}}, "labels.email", "blank"),
        ({"labels": {"email": "id"}}, "labels", "both be called 'id'"),
        ({"formula_protection": "maybe"}, "formula_protection", "auto"),
        ({"parquet": {"compression": "snappy", "compression_level": 3}}, "parquet.compression_level", "no level"),
        ({"parquet": {"compression_level": 23}}, "parquet.compression_level", "1 to 22"),
        ({"parquet": {"compression": "zip"}}, "parquet.compression", "zstd"),
        ({"xlsx": {"sheet_name": "a/b"}}, "xlsx.sheet_name", "31 characters"),
        ({"xlsx": {"sheet_name": "x" * 32}}, "xlsx.sheet_name", "31 characters"),
        ({"pdf": {"orientation": "sideways"}}, "pdf.orientation", "landscape"),
        ({"pdf": {"title": "a\x00b"}}, "pdf.title", "NUL"),
    ],
)
def test_bad_options_in_request_params_name_the_field(params, field, words):
    with pytest.raises(RequestError) as caught:
        plan_request("users", "csv", params)
    assert caught.value.field == field
    assert words in caught.value.message


EVERY_OPTION = {
    "columns": ["id", "email", "updated_at"],
    "labels": {"email": "E-mail address"},
    "time_zone": "America/New_York",
    "formula_protection": "on",
    "csv": {
        "delimiter": ";", "quote_char": "'", "quote_style": "always", "header": False, "null_value": "NULL",
        "line_terminator": "crlf", "bom": True, "date_format": "%d/%m/%Y", "timestamp_format": "%Y-%m-%d %H:%M",
    },
    "parquet": {"compression": "gzip", "compression_level": 9},
    "xlsx": {"sheet_name": "Users"},
    "pdf": {"title": "Our users", "orientation": "portrait"},
}


@pytest.mark.parametrize("fmt", [f.value for f in ExportFormat] + [f.name for f in ExportFormat])
def test_every_option_round_trips_through_run_config(fmt):
    plan = plan_request("users", fmt, EVERY_OPTION)
    assert plan.options.labels == {"email": "E-mail address"} and plan.csv.line_terminator.text == "\r\n"
    run_config = run_config_for(plan)
    job = defs.resolve_job_def("export_users")
    assert dg.validate_run_config(job, run_config)
    op_config = run_config["ops"]["plan_users"]["config"]
    assert op_config["format"] == ExportFormat.parse(fmt).name
    assert ExportOptions.model_validate({k: op_config[k] for k in ExportOptions.model_fields}) == plan.options


CANONICAL_CASES = [
    ("users", "csv.gz", EVERY_OPTION, {}),
    ("users", "xlsx", {"filters": {"country_code": "US,GB", "lifetime_value_min": 10, "signup_date_from": "2024-01-31"}}, {}),
    ("users", "parquet", {"order": "none", "columns": "email, id"}, {"chunks": 4}),
    ("ezpass_transactions", "ndjson", {"filters": {"transaction_id": "[1, \"2\"]", "vin": "1HGCM"}}, {"chunks": 3}),
    ("ezpass_transactions", "csv", {}, {"incremental": Incremental("updated_at", "hourly", "2024-01-31 09:30:00+00")}),
    ("ledger_postings", "pdf", {"pdf": {"title": "Données"}}, {"output_path": "/srv/My Exports/ledger.pdf"}),
]


@pytest.mark.parametrize(("export_type", "fmt", "params", "extra"), CANONICAL_CASES)
def test_the_run_config_is_the_plans_canonical_form_and_checks_back_into_the_same_plan(export_type, fmt, params, extra):
    plan = plan_request(export_type, fmt, params, **extra)
    lower = plan.incremental.lower if plan.incremental else None
    assert plan_config(export_type, plan.config, lower) == plan
    # What the plan op is given: the config as Dagster processed it (defaults filled in, enums by name).
    job = defs.resolve_job_def(REGISTRY.get(export_type).job_name)
    processed = dg.validate_run_config(job, run_config_for(plan))["ops"][f"plan_{export_type}"]["config"]
    assert plan_config(export_type, processed, lower) == plan
    assert run_config_for(plan)["ops"][f"plan_{export_type}"]["config"] == plan.config


def test_a_launchpad_edit_of_the_canonical_form_is_checked_naming_the_field():
    config = plan_request("users", "csv", {}).config
    for field, value, words in [
        ("columns", ["id", "password"], "columns: unknown column 'password'"),
        ("filters", {"signup_date_from": "31/01/2024"}, "filters.signup_date_from: expected a date"),
        ("format", "xls", "format: unknown format 'xls'"),
        ("csv", {**config["csv"], "delimiter": ";;"}, "csv.delimiter"),
        ("sort", "name", "sort: unknown field"),
    ]:
        with pytest.raises(RequestError, match=words):
            plan_config("users", {**config, field: value})


def test_read_ranges_are_decided_from_what_the_snapshot_shows():
    in_order, in_no_order = plan_request("users", "csv", {}), plan_request("users", "csv", {"order": "none"})
    one = Reading.of(in_order)
    assert one.needs is Need.COUNT and one.ranges(Shown(10)) == [None]
    chunk = Reading.of(in_no_order, key_range=KeyRange("1", "5"))
    assert chunk.needs is Need.COUNT and chunk.ranges(Shown(4)) == [KeyRange("1", "5")]
    keys = Reading.of(in_order, 3)
    assert keys.needs is Need.EXTENT
    assert keys.ranges(Shown(90, 1, 90)) == [KeyRange(None, "31"), KeyRange("31", "61"), KeyRange("61", None)]
    pages = Reading.of(in_no_order, 3)
    assert pages.needs is Need.LIMITS
    assert pages.ranges(Shown(90, pages=30_000, per_query=8, free_connections=100)) == [
        PageRange(None, 10_000), PageRange(10_000, 20_000), PageRange(20_000, None)
    ]
    assert pages.ranges(Shown(90, pages=None)) == [None]  # a view: one stream
    # As many as the database allows one query (per_query), at most the resource's cap.
    capped = Reading.of(in_no_order, cap=2).ranges(Shown(9, pages=50_000, per_query=8, free_connections=100))
    assert len(capped) == min(2, len(os.sched_getaffinity(0)))
    assert chunk_ranges(1, 90, 3)[-1] == KeyRange("61", "90", upper_inclusive=True)


@pytest.mark.parametrize(
    ("fmt", "options", "protected"),
    [
        ("csv", {}, False),
        ("csv", {"csv": {"bom": True}}, True),
        ("csv.gz", {"formula_protection": "on"}, True),
        ("csv", {"csv": {"bom": True}, "formula_protection": "off"}, False),
        ("xlsx", {}, True),
        ("xlsx", {"formula_protection": "off"}, False),
        ("ndjson", {"formula_protection": "on"}, False),  # JSON is not opened by spreadsheets as text cells
        ("parquet", {"formula_protection": "on"}, False),
    ],
)
def test_formula_protection_default_and_choices(fmt, options, protected):
    assert plan_request("users", fmt, options).protects_formulas is protected


def test_every_format_parses_from_name_and_extension():
    for member in ExportFormat:
        assert ExportFormat.parse(member.name) is ExportFormat.parse(member.value) is member
        assert member.name.isidentifier()


@pytest.mark.parametrize("params", [None, [], "{}", 5])
def test_params_must_be_an_object_and_null_is_not_everything(params):
    with pytest.raises(RequestError) as raised:
        plan_request("users", "csv", params)
    assert raised.value.field == "params" and "use {} for all rows" in raised.value.message


def test_an_error_quotes_a_huge_value_briefly():
    error = error_for("ezpass_transactions", "csv", filters={"vin": ["x" * 5000]})
    assert error.field == "filters.vin" and len(str(error)) < 200


@pytest.mark.parametrize(
    "text, field",
    [('{"filters": {"driver_id": ' + "9" * 5000 + "}}", "params"), ("[" * 5000 + "]" * 5000, "params")],
)
def test_params_json_python_cannot_read_names_params(text, field):
    with pytest.raises(RequestError) as raised:
        decode_params(text)
    assert raised.value.field == field
