"""Run export jobs and read their files back through Postgres, pyarrow, openpyxl or pypdf, for
row-by-row checks against the database."""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import openpyxl
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pypdf
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from export_platform.tooling.embedded_postgres import ensure_database
from export_platform.catalog.export_types import REGISTRY
from export_platform.jobs import build_export_job
from export_platform.naming import INCREMENTAL_TAG
from export_platform.ops.plan import plan_op_name
from export_platform.resources.storage import file_uri_path
from export_platform.tooling.sample_data import seed


def run_job(export_type: str, config: dict[str, Any], resources: dict, tags=None, instance=None) -> dg.ExecuteInProcessResult:
    job = build_export_job(REGISTRY.get(export_type))
    return job.execute_in_process(
        run_config={"ops": {plan_op_name(export_type): {"config": config}}},
        resources=resources,
        raise_on_error=False,
        tags=tags,
        instance=instance,
    )


def run_incremental(config: dict, resources: dict, export_type: str = "users") -> dg.ExecuteInProcessResult:
    """`run_job` for an incremental config, with the key's tag its plan op requires."""
    return run_job(export_type, config, resources, tags={INCREMENTAL_TAG: config["incremental"]["key"]})


def published_path(result: dg.ExecuteInProcessResult) -> Path:
    return file_uri_path(result.output_for_node("publish_export").uri)


def db_rows(conn: psycopg.Connection, relation: str, columns: list[str], where: str = "", params=()) -> list[tuple]:
    query = sql.SQL("SELECT {} FROM {} {} ORDER BY id").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(relation), sql.SQL(where)
    )
    return conn.execute(query, params).fetchall()


def _empty_copy(conn: psycopg.Connection, relation: str, columns: list[str]) -> None:
    conn.execute(
        sql.SQL("CREATE TEMP TABLE readback AS SELECT {} FROM {} LIMIT 0").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(relation)
        )
    )
    conn.execute("CREATE TEMP TABLE readback_type AS TABLE readback")  # the row type, without _line
    # Physical order (ctid) is not insertion order: number the rows as they arrive instead.
    conn.execute("ALTER TABLE readback ADD COLUMN _line bigint GENERATED ALWAYS AS IDENTITY")


def _readback_rows(conn: psycopg.Connection) -> list[tuple]:
    # Each readback table has its own shape: never reuse a prepared plan across them.
    rows = conn.execute("SELECT * FROM readback ORDER BY _line", prepare=False).fetchall()
    conn.execute("DROP TABLE readback, readback_type")
    return [row[:-1] for row in rows]


BOM = b"\xef\xbb\xbf"


def file_bytes(path: Path) -> bytes:
    """The file's contents, gzip or zstd decompressed by extension (.gz, .zst)."""
    with pa.input_stream(str(path), compression="detect") as stream:
        return stream.read()


def csv_rows(
    conn, relation, columns, path: Path, *, delimiter=",", quote='"', header=True, null="", bom=False, labels=None
) -> list[tuple]:
    """Let Postgres parse the CSV: it tells NULL (empty) from "" and parses every type exactly."""
    data = file_bytes(path)
    assert data.startswith(BOM) == bom
    data = data.removeprefix(BOM)
    if header:
        first_line = data.decode().splitlines()[0]
        assert next(csv.reader([first_line], delimiter=delimiter, quotechar=quote)) == (labels or columns), first_line
    _empty_copy(conn, relation, columns)
    copy = sql.SQL(
        "COPY readback ({}) FROM STDIN WITH (FORMAT csv, HEADER {}, DELIMITER {}, QUOTE {}, NULL {})"
    ).format(
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL("true" if header else "false"), sql.Literal(delimiter), sql.Literal(quote), sql.Literal(null),
    )
    with conn.cursor().copy(copy) as writer:
        writer.write(data)
    return _readback_rows(conn)


def _json_rows(conn, relation, columns, objects: list[dict], keys: list[str]) -> list[tuple]:
    assert all(list(o) == keys for o in objects)
    renamed = [dict(zip(columns, o.values())) for o in objects]
    _empty_copy(conn, relation, columns)
    conn.execute(
        sql.SQL(
            "INSERT INTO readback ({columns}) SELECT {columns}"
            " FROM jsonb_populate_recordset(NULL::readback_type, %s::jsonb) WITH ORDINALITY ORDER BY ordinality"
        ).format(columns=sql.SQL(", ").join(map(sql.Identifier, columns))),
        (json.dumps(renamed),),
    )
    return _readback_rows(conn)


def ndjson_rows(conn, relation, columns, path: Path, labels=None) -> list[tuple]:
    objects = [json.loads(line) for line in file_bytes(path).decode("utf-8").splitlines()]
    return _json_rows(conn, relation, columns, objects, labels or columns)


def json_rows(conn, relation, columns, path: Path, labels=None) -> list[tuple]:
    objects = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(objects, list)
    return _json_rows(conn, relation, columns, objects, labels or columns)


def parquet_rows(path: Path, columns: list[str]) -> list[tuple]:
    table = pq.read_table(path)
    assert table.column_names == columns
    return [tuple(row[c] for c in columns) for row in table.to_pylist()]


def _excel_unescaped(value: Any) -> Any:
    """Excel's reading of `_xHHHH_` escapes (control characters, and `_x005F_` for a literal `_`)."""
    if not isinstance(value, str):
        return value
    return re.sub(r"_x([0-9A-Fa-f]{4})_", lambda m: chr(int(m[1], 16)), value)


def _excel_value(value: Any) -> Any:
    # A double read back as the shortest decimal that round-trips: the digits that were written.
    return Decimal(repr(value)) if isinstance(value, float) else _excel_unescaped(value)


def xlsx_sheets(path: Path, header: list[str]) -> dict[str, list[tuple]]:
    """Each sheet's data rows, in order, after checking that every sheet starts with the header."""
    book = openpyxl.load_workbook(path, read_only=True)
    sheets = {}
    for sheet in book.worksheets:
        rows = sheet.iter_rows(values_only=True)
        assert list(next(rows)) == header
        sheets[sheet.title] = [tuple(_excel_value(v) for v in row) for row in rows]
    book.close()
    return sheets


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralised(text: Any) -> Any:
    """The documented rule: a ' before text that starts like a formula, unless it is a number."""
    if not isinstance(text, str) or not text.startswith(FORMULA_START):
        return text
    try:
        float(text)
        return text
    except ValueError:
        return "'" + text


def as_excel(value: Any, protect: bool = True) -> Any:
    """What the xlsx cell should hold for a database value (time zone UTC), as openpyxl reads it."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    return neutralised(value) if protect else value


def _same_cell(expected: Any, actual: Any) -> bool:
    # openpyxl rounds a cell's day fraction to the millisecond (Excel shows no finer).
    if isinstance(expected, dt.datetime) and isinstance(actual, dt.datetime):
        return abs(expected - actual) <= dt.timedelta(microseconds=500)
    return expected == actual and type(expected) is type(actual) or (
        isinstance(expected, (int, Decimal)) and isinstance(actual, (int, Decimal)) and expected == actual
    )


def xlsx_mismatches(actual: list[tuple], expected: list[tuple], protect: bool = True) -> list[tuple]:
    """(expected, actual) row pairs that differ; a missing or extra row counts as a mismatch."""
    wanted = [tuple(as_excel(v, protect) for v in row) for row in expected]
    pairs = [(e, a) for e, a in zip(wanted, actual) if len(e) != len(a) or not all(map(_same_cell, e, a))]
    return pairs + [("row count", len(wanted), len(actual))] * (len(wanted) != len(actual))


def xlsx_rows(path: Path, header: list[str]) -> list[tuple]:
    return [row for rows in xlsx_sheets(path, header).values() for row in rows]


def _pdf_pieces(page: pypdf.PageObject, font_size: float) -> list[tuple[float, str]]:
    pieces: list[tuple[float, str]] = []
    page.extract_text(
        visitor_text=lambda text, cm, tm, font, size: pieces.append((tm[4], text))
        if size == font_size and text.strip() else None
    )
    return pieces


def _pdf_cell_text(parts: list[str]) -> str:
    text = re.sub(r"\[U\+([0-9A-F]{4,6})\]", lambda m: chr(int(m[1], 16)), "".join(parts))
    return "".join(text.split())


def _pdf_page_rows(pieces: list[tuple[float, str]], width: int) -> list[tuple[str, ...]]:
    # The header row comes first, its cells left to right (a wrapped heading repeats its x); the
    # first data row starts left of the last heading.
    header_end = next((i for i in range(1, len(pieces)) if pieces[i][0] < pieces[i - 1][0]), len(pieces))
    edges = sorted({x - 1 for x, _ in pieces[:header_end]})
    assert len(edges) == width
    rows: list[list[list[str]]] = [[[] for _ in range(width)]]
    for index, (x, text) in enumerate(pieces):
        column = max(i for i, edge in enumerate(edges) if x >= edge)
        if column == 0 and index >= header_end:
            rows.append([[] for _ in range(width)])
        rows[-1][column].append(text)
    return [tuple(_pdf_cell_text(parts) for parts in row) for row in rows]


def pdf_rows(path: Path, header: list[str], font_size: float) -> list[tuple[str, ...]]:
    """The table's cells with all whitespace removed (text extraction keeps neither spacing nor
    the difference between a line break and a wrapped line), `[U+XXXX]` escapes decoded. Each
    page must start with the header. Needs a first column that is never empty and fits one line
    (such as an id): it is how a new row is recognised."""
    rows: list[tuple[str, ...]] = []
    for page in pypdf.PdfReader(path).pages:
        page_rows = _pdf_page_rows(_pdf_pieces(page, font_size), len(header))
        assert list(page_rows[0]) == header
        rows.extend(page_rows[1:])
    return rows


def as_pdf_text(value: Any) -> str:
    """What a pdf cell shows for a database value (time zone UTC), whitespace removed."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        shown, us = value.astimezone(dt.timezone.utc), value.microsecond
        # Only the digits the value has: none, milliseconds or microseconds.
        fraction = "" if not us else f".{us // 1000:03d}" if us % 1000 == 0 else f".{us:06d}"
        return f"{shown:%Y-%m-%d%H:%M:%S}{fraction}+00:00"
    return "".join(str(value).split())


def file_rows(conn, relation: str, columns: list[str], fmt: str, path: Path, **options) -> list[tuple]:
    family = fmt.replace("_", ".").split(".")[0]
    if family == "csv":
        return csv_rows(conn, relation, columns, path, **options)
    if family == "ndjson":
        return ndjson_rows(conn, relation, columns, path, **options)
    if family == "json":
        return json_rows(conn, relation, columns, path, **options)
    return parquet_rows(path, columns)


def database_beside(url: str, name: str) -> str:
    """A connection string for database `name` on the same server, created if missing."""
    ensure_database(url, name)
    return make_conninfo(**{**conninfo_to_dict(url), "dbname": name})


def seeded_beside(url: str, name: str, rows: int, tables: tuple[str, ...]) -> str:
    """`database_beside`, with `rows` sample rows in each of `tables`."""
    beside = database_beside(url, name)
    with psycopg.connect(beside, autocommit=True) as conn:
        seed(conn, rows, tables)
    return beside
