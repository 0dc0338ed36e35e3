"""Run export jobs and read their files back through Postgres or pyarrow, for row-by-row checks."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pyarrow.parquet as pq
from psycopg import sql

from export_platform.export_types import REGISTRY
from export_platform.jobs import build_export_job
from export_platform.ops.export import plan_op_name


def run_job(export_type: str, config: dict[str, Any], resources: dict, tags=None, instance=None) -> dg.ExecuteInProcessResult:
    job = build_export_job(REGISTRY.get(export_type))
    return job.execute_in_process(
        run_config={"ops": {plan_op_name(export_type): {"config": config}}},
        resources=resources,
        raise_on_error=False,
        tags=tags,
        instance=instance,
    )


def published_path(result: dg.ExecuteInProcessResult) -> Path:
    return Path(result.output_for_node("publish_export").uri.removeprefix("file://"))


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


def csv_rows(conn, relation, columns, path: Path, *, delimiter=",", quote='"', header=True) -> list[tuple]:
    """Let Postgres parse the CSV: it tells NULL (empty) from "" and parses every type exactly."""
    data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    if header:
        first_line = data.split(b"\n", 1)[0].decode()
        assert first_line == delimiter.join(columns), first_line
    _empty_copy(conn, relation, columns)
    copy = sql.SQL("COPY readback ({}) FROM STDIN WITH (FORMAT csv, HEADER {}, DELIMITER {}, QUOTE {})").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL("true" if header else "false"), sql.Literal(delimiter), sql.Literal(quote)
    )
    with conn.cursor().copy(copy) as writer:
        writer.write(data)
    return _readback_rows(conn)


def ndjson_rows(conn, relation, columns, path: Path) -> list[tuple]:
    objects = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(list(o) == columns for o in objects)
    _empty_copy(conn, relation, columns)
    conn.execute(
        sql.SQL(
            "INSERT INTO readback ({columns}) SELECT {columns}"
            " FROM jsonb_populate_recordset(NULL::readback_type, %s::jsonb) WITH ORDINALITY ORDER BY ordinality"
        ).format(columns=sql.SQL(", ").join(map(sql.Identifier, columns))),
        (json.dumps(objects),),
    )
    return _readback_rows(conn)


def parquet_rows(path: Path, columns: list[str]) -> list[tuple]:
    table = pq.read_table(path)
    assert table.column_names == columns
    return [tuple(row[c] for c in columns) for row in table.to_pylist()]


def file_rows(conn, relation: str, columns: list[str], fmt: str, path: Path, **csv_options) -> list[tuple]:
    if fmt in ("csv", "csv_gz", "csv.gz"):
        return csv_rows(conn, relation, columns, path, **csv_options)
    if fmt == "ndjson":
        return ndjson_rows(conn, relation, columns, path)
    return parquet_rows(path, columns)
