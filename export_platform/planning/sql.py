"""Every SQL statement the export path runs, built from registry-checked identifiers.

User values never appear in the statement text. The rows stream through `COPY (SELECT ...) TO
STDOUT`, which takes no parameters, so the values are bound server-side into transaction-local
settings first, by a statement of their own with real bound parameters:

    SELECT set_config('export_platform.p0', $1, true) AS s0   -- $1 bound by the driver
    SELECT ... WHERE country_code = current_setting('export_platform.p0')::text

`current_setting` is stable, so the planner treats it like a parameter and can use indexes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from enum import Enum

from psycopg import sql

from .key_ranges import KeyRange, PageRange
from .plan import Condition, ExportPlan
from ..catalog.registry import Operator, ValueType

_CAST = {
    ValueType.TEXT: sql.SQL("text"),
    ValueType.INTEGER: sql.SQL("bigint"),
    ValueType.NUMERIC: sql.SQL("numeric"),
    ValueType.DATE: sql.SQL("date"),
}
_COMPARE = {Operator.EQ: sql.SQL("="), Operator.MIN: sql.SQL(">="), Operator.MAX: sql.SQL("<=")}


def _setting(index: int) -> sql.Composable:
    return sql.SQL("current_setting({})").format(sql.Literal(f"export_platform.p{index}"))


def _identifier(dotted: str) -> sql.Identifier:
    return sql.Identifier(*dotted.split("."))


def _predicate(index: int, condition: Condition) -> sql.Composable:
    column, cast = sql.Identifier(condition.column), _CAST[condition.value_type]
    if condition.multi:
        return sql.SQL("{} = ANY(ARRAY(SELECT jsonb_array_elements_text({}::jsonb))::{}[])").format(
            column, _setting(index), cast
        )
    if condition.op is Operator.MAX_DATE_END:
        return sql.SQL("{} < {}::date + 1").format(column, _setting(index))
    return sql.SQL("{} {} {}::{}").format(column, _COMPARE[condition.op], _setting(index), cast)


def _incremental_predicates(plan: ExportPlan) -> list[sql.Composable]:
    if plan.incremental is None:
        return []
    column = sql.Identifier(plan.incremental.column)
    upper = sql.SQL("{} < current_setting('export_platform.upper')::timestamptz").format(column)
    if plan.incremental.lower is None:
        return [upper]
    return [sql.SQL("{} >= current_setting('export_platform.lower')::timestamptz").format(column), upper]


_KEY_LOWER, _KEY_UPPER = "export_platform.key_lower", "export_platform.key_upper"
_PAGE_LOWER, _PAGE_UPPER = "export_platform.page_lower", "export_platform.page_upper"
Range = KeyRange | PageRange


def _first_tid(setting: str) -> sql.Composable:
    # The tid of the first row slot of the page the setting names: '(page,0)'.
    return sql.SQL("('(' || current_setting({}) || ',0)')::tid").format(sql.Literal(setting))


def _page_predicates(pages: PageRange) -> list[sql.Composable]:
    predicates = []
    if pages.lower is not None:
        predicates.append(sql.SQL("ctid >= {}").format(_first_tid(_PAGE_LOWER)))
    if pages.upper is not None:
        predicates.append(sql.SQL("ctid < {}").format(_first_tid(_PAGE_UPPER)))
    return predicates


def _range_predicates(plan: ExportPlan, key_range: Range | None) -> list[sql.Composable]:
    # Only the sides a range has: a bare `key >= x AND key < y` lets the planner scan the key's index.
    if key_range is None:
        return []
    if isinstance(key_range, PageRange):
        return _page_predicates(key_range)
    key, predicates = sql.Identifier(plan.chunk_key or ""), []
    if key_range.lower is not None:
        predicates.append(sql.SQL("{} >= current_setting({})::bigint").format(key, sql.Literal(_KEY_LOWER)))
    if key_range.upper is not None:
        compare = sql.SQL("<=" if key_range.upper_inclusive else "<")
        predicates.append(sql.SQL("{} {} current_setting({})::bigint").format(key, compare, sql.Literal(_KEY_UPPER)))
    return predicates


def _where(plan: ExportPlan, key_range: Range | None = None) -> sql.Composable:
    predicates = [_predicate(i, c) for i, c in enumerate(plan.conditions)] + _incremental_predicates(plan)
    predicates += _range_predicates(plan, key_range)
    if not predicates:
        return sql.SQL("")
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(predicates)


def _settings(
    plan: ExportPlan, key_range: Range | None = None, upper: str | None = None
) -> list[tuple[str, str]]:
    """(setting, value) pairs: the plan's filter values, the incremental bounds, a stream's range."""
    values = [json.dumps(list(c.values)) if c.multi else c.values[0] for c in plan.conditions]
    settings = [(f"export_platform.p{i}", value) for i, value in enumerate(values)]
    if plan.incremental and plan.incremental.lower:
        settings.append(("export_platform.lower", plan.incremental.lower))
    if upper is not None:  # a chunk reads up to the bound fixed where the export was planned
        settings.append(("export_platform.upper", upper))
    if isinstance(key_range, PageRange):
        bounds = ((_PAGE_LOWER, key_range.lower), (_PAGE_UPPER, key_range.upper))
        settings += [(name, str(value)) for name, value in bounds if value is not None]
    elif key_range is not None:
        bounds = ((_KEY_LOWER, key_range.lower), (_KEY_UPPER, key_range.upper))
        settings += [(name, value) for name, value in bounds if value is not None]
    return settings


def parameters(plan: ExportPlan, key_range: Range | None = None, upper: str | None = None) -> tuple[str, ...]:
    """The values bound to `bind_statement`, one text per setting."""
    return tuple(value for _, value in _settings(plan, key_range, upper))


def bind_statement(plan: ExportPlan, key_range: Range | None = None, upper: str | None = None) -> str | None:
    names = [name for name, _ in _settings(plan, key_range, upper)]
    if not names:
        return None
    # Named columns: DuckDB's postgres_query takes a result's column names as its own.
    calls = [
        sql.SQL("set_config({}, {}, true) AS {}").format(sql.Literal(name), sql.SQL(f"${i + 1}"), sql.Identifier(f"s{i}"))
        for i, name in enumerate(names)
    ]
    return (sql.SQL("SELECT ") + sql.SQL(", ").join(calls)).as_string()


# The incremental upper bound (see "Incremental exports: exactly once" in docs/design.md). Run
# alone, in autocommit, *before* the export's snapshot is taken: the sessions it sees are read
# first, so a writer that commits between this read and the snapshot is in the snapshot, and one
# that commits after it was seen here. The bound is the earliest of
#   - this statement's start minus a margin ($1 seconds): covers a writer that has read the clock
#     for its now() but not yet published its state (a few instructions, unless descheduled);
#   - xact_start of every session of this database in a transaction, with or without an xid:
#     its now() is its xact_start, and it may still write;
#   - query_start of every session running a statement outside a transaction: the statement
#     start a transaction opened by it takes as its now().
# Autovacuum never writes rows, and its long transactions would hold the bound back.
INCREMENTAL_BOUND = """
SELECT
  pg_has_role('pg_read_all_stats', 'USAGE') AS sees_every_session,
  pg_is_in_recovery() AS on_standby,
  (SELECT string_agg(gid, ', ') FROM pg_prepared_xacts WHERE database = current_database()) AS prepared,
  least(
    statement_timestamp() - make_interval(secs => $1::float8),
    (SELECT min(least(xact_start, CASE WHEN state IN ('active', 'fastpath function call') THEN query_start END))
       FROM pg_stat_activity
      WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type <> 'autovacuum worker')
  )::text AS bound
"""


class Read(str, Enum):
    """How the reader receives a column: decoded by DuckDB, or as Postgres's own text of it where
    DuckDB's decoding is not exact (see `resources/postgres.py`, "How each column is read")."""

    NATIVE = "native"
    TEXT = "text"  # col::text
    PADDED = "padded"  # char(n) with its padding: DuckDB trims it, and so does ::text


_READ = {
    Read.NATIVE: sql.SQL("{}"),
    Read.TEXT: sql.SQL("{}::text"),
    # bpcharout is char(n)'s output function, which keeps the padding; both are strict (NULL stays NULL).
    Read.PADDED: sql.SQL("textin(bpcharout({}))"),
}


def _rows_statement(plan: ExportPlan, columns: list[sql.Composable], key_range: Range | None) -> str:
    order = sql.SQL(" ORDER BY ") + sql.SQL(", ").join(map(sql.Identifier, plan.order_by))
    return sql.SQL("SELECT {columns} FROM {relation}{where}{order}").format(
        columns=sql.SQL(", ").join(columns),
        relation=_identifier(plan.relation),
        where=_where(plan, key_range),
        order=order if plan.ordered else sql.SQL(""),
    ).as_string()


def _named(expression: sql.Composable, column: str) -> sql.Composable:
    return sql.SQL("{} AS {}").format(expression, sql.Identifier(column))


def select_statement(plan: ExportPlan, key_range: Range | None = None, reads: Mapping[str, Read] | None = None) -> str:
    """The export's rows, each column read as `reads` says (NATIVE when not named)."""
    reads = reads or {}
    return _rows_statement(plan, [read_column(c, reads.get(c, Read.NATIVE)) for c in plan.columns], key_range)


def read_column(column: str, read: Read) -> sql.Composable:
    """The column as `read` says, named as itself."""
    if read is Read.NATIVE:
        return sql.Identifier(column)
    return _named(_READ[read].format(sql.Identifier(column)), column)


def columns_statement(plan: ExportPlan, reads: Mapping[str, Read] | None = None) -> str:
    """The export's columns (read as `reads` says) with their types and no rows: what a preflight
    needs to know."""
    reads = reads or {}
    columns = [read_column(c, reads.get(c, Read.NATIVE)) for c in plan.columns]
    return sql.SQL("SELECT {columns} FROM {relation} LIMIT 0").format(
        columns=sql.SQL(", ").join(columns), relation=_identifier(plan.relation)
    ).as_string()


class CsvText(str, Enum):
    """How the server writes a column in the export's CSV, where its text is the one Polars would
    write (sinks/server_csv.py): as Postgres prints it, or formatted as the sinks format it."""

    AS_PRINTED = "as printed"  # text, integers, numeric: Postgres's text is the writers' text
    PADDED = "padded"  # char(n)
    BOOLEAN = "boolean"  # true / false, not Postgres's t / f
    DATE = "date"  # %Y-%m-%d
    TIMESTAMP = "timestamp"  # %Y-%m-%dT%H:%M:%S%.6f
    TIMESTAMPTZ = "timestamptz"  # %Y-%m-%dT%H:%M:%S%.6f%:z, in the session's time zone


def _iso_year(column: sql.Composable) -> sql.Composable:
    # The year as the writers' %Y prints it (chrono): 4 digits, astronomical (1 BC is 0000, 2 BC
    # -0001), a + beyond 9999. Only for values outside 0001-9999, where to_char's YYYY differs.
    year = sql.SQL("(CASE WHEN extract(year FROM {c}) < 0 THEN extract(year FROM {c}) + 1 ELSE extract(year FROM {c}) END)::int").format(c=column)
    return sql.SQL(
        "(CASE WHEN {y} > 9999 THEN '+' || {y} WHEN {y} < 0 THEN '-' || lpad((-{y})::text, 4, '0') "
        "ELSE lpad({y}::text, 4, '0') END)"
    ).format(y=year)


def _iso(column: sql.Composable, rest: str, low: str, high: str, common: sql.Composable | None = None) -> sql.Composable:
    """to_char with an ISO year: `rest` is the pattern after the year (from -MM on). `common`, when
    given, is a cheaper expression of the same text for years 0001-9999."""
    common = common or sql.SQL("to_char({c}, {full})").format(c=column, full=sql.Literal("YYYY" + rest))
    return sql.SQL("CASE WHEN {c} >= {low} AND {c} < {high} THEN {common} ELSE {year} || to_char({c}, {rest}) END").format(
        c=column, low=sql.SQL(low), high=sql.SQL(high), common=common, year=_iso_year(column), rest=sql.Literal(rest)
    )


_TIME = '-MM-DD"T"HH24:MI:SS.US'
_CSV_TEXT = {
    CsvText.AS_PRINTED: lambda c: c,
    CsvText.PADDED: lambda c: _READ[Read.PADDED].format(c),
    CsvText.BOOLEAN: lambda c: sql.SQL("CASE WHEN {c} THEN 'true' WHEN NOT {c} THEN 'false' END").format(c=c),
    # A date's own text (DateStyle ISO, set by SET_CSV_SESSION) is YYYY-MM-DD in those years, and
    # costs the server a third of to_char's time.
    CsvText.DATE: lambda c: _iso(c, "-MM-DD", "date '0001-01-01'", "date '10000-01-01'", sql.SQL("{}::text").format(c)),
    CsvText.TIMESTAMP: lambda c: _iso(c, _TIME, "timestamp '0001-01-01'", "timestamp '10000-01-01'"),
    CsvText.TIMESTAMPTZ: lambda c: _iso(c, _TIME + "TZH:TZM", "timestamptz '0001-01-01 00:00+00'", "timestamptz '10000-01-01 00:00+00'"),
}


def csv_statement(plan: ExportPlan, texts: Mapping[str, CsvText], key_range: Range | None = None) -> str:
    """The export's rows as the text the server writes into the CSV (see `CsvText`)."""
    columns = [_named(_CSV_TEXT[texts[c]](sql.Identifier(c)), c) for c in plan.columns]
    return _rows_statement(plan, columns, key_range)


def _nan_probes(columns: Sequence[str]) -> sql.Composable:
    # Whether each NUMERIC(p, s) column holds a NaN, which DuckDB would read as 0.
    return sql.SQL("").join(
        sql.SQL(", coalesce(bool_or({} = 'NaN'), false)").format(sql.Identifier(c)) for c in columns
    )


def count_statement(plan: ExportPlan, key_range: Range | None = None, nan_columns: Sequence[str] = ()) -> str:
    """The rows to export, and for each of `nan_columns` whether it holds a NaN, in one pass."""
    return sql.SQL("SELECT count(*){probes} FROM {relation}{where}").format(
        probes=_nan_probes(nan_columns), relation=_identifier(plan.relation), where=_where(plan, key_range)
    ).as_string()


def extent_statement(plan: ExportPlan, nan_columns: Sequence[str] = ()) -> str:
    """The rows to export and their chunk key's extent (then the NaN probes of `count_statement`),
    in one pass: what a split needs."""
    key = sql.Identifier(plan.chunk_key or "")
    return sql.SQL("SELECT count(*), min({key}), max({key}){probes} FROM {relation}{where}").format(
        key=key, probes=_nan_probes(nan_columns), relation=_identifier(plan.relation), where=_where(plan)
    ).as_string()


def stream_limits_statement(plan: ExportPlan) -> str:
    """What bounds the number of parallel page streams: the relation's heap pages (NULL for a view
    or a partitioned table, which have no pages of their own), how many processes the database lets
    one query use (its parallel workers plus the leader), and the connections still free."""
    return sql.SQL(
        "SELECT CASE WHEN relkind IN ('r', 'm') THEN pg_relation_size(oid) / current_setting('block_size')::int END, "
        "current_setting('max_parallel_workers_per_gather')::int + 1, "
        "current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int "
        "- (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') "
        "FROM pg_class WHERE oid = {}::regclass"
    ).format(sql.Literal(_identifier(plan.relation).as_string())).as_string()


# Other connections adopt this transaction's snapshot (SET TRANSACTION SNAPSHOT), so that every
# chunk of an export reads the same committed state.
EXPORT_SNAPSHOT = "SELECT pg_export_snapshot()"
_SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+(-[0-9]+)?")


def import_snapshot(snapshot_id: str) -> str:
    # The id comes from pg_export_snapshot(); SET TRANSACTION SNAPSHOT takes no parameters, so the
    # id is checked to be one before it is quoted into the statement.
    if not _SNAPSHOT_ID.fullmatch(snapshot_id):
        raise ValueError(f"not a snapshot id: {snapshot_id!r}")
    return sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_id)).as_string()


BEGIN_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
# Dates in filters and timestamps in files are UTC whatever the server's default zone.
SET_UTC = "SET LOCAL TIME ZONE 'UTC'"
# The server's CSV writes timestamptz in the export's zone (bound, $1) and dates as ISO text, and
# quotes COPY's options as standard SQL strings whatever the server's defaults.
SET_CSV_SESSION = (
    "SELECT set_config('TimeZone', $1, true) AS z, set_config('DateStyle', 'ISO, YMD', true) AS d, "
    "set_config('standard_conforming_strings', 'on', true) AS s"
)
CANCEL_SESSION = (
    "SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
    "WHERE application_name = %s AND pid <> pg_backend_pid()"
)
# Ends the sessions themselves: a cancel does not reach a backend blocked writing to a client that
# does not read (a frozen worker), nor a transaction waiting for its client's COMMIT.
TERMINATE_SESSION = CANCEL_SESSION.replace("pg_cancel_backend", "pg_terminate_backend")
