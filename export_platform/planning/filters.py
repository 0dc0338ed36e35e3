"""A request's filters, checked against its export type's declared filters: each value parsed as
its declared type (a list where the filter takes several), ranges not reversed, and turned into
the conditions the query binds."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..catalog.registry import ExportType, Filter, Operator, ValueType
from .values import RequestError, cut, date, integer, numeric, text

MAX_LIST_VALUES = 10_000


@dataclass(frozen=True)
class Condition:
    column: str
    op: Operator
    value_type: ValueType
    values: tuple[str, ...]  # canonical text, bound as parameters and cast in SQL
    multi: bool


_PARSERS = {ValueType.TEXT: text, ValueType.INTEGER: integer, ValueType.NUMERIC: numeric, ValueType.DATE: date}


def _filter_values(f: Filter, raw: Any) -> tuple[str, ...]:
    field = f"filters.{f.name}"
    if f.multi:
        if isinstance(raw, str) and raw.startswith("["):
            try:
                raw = json.loads(raw)
            except ValueError:
                raise RequestError(field, "looks like a JSON list but does not parse") from None
        if isinstance(raw, str):
            raw = raw.split(",")  # the comma-separated form the systems this replaces accepted
        items = raw if isinstance(raw, list) else [raw]
        if not items:
            raise RequestError(field, "empty list: give at least one value")
        if len(items) > MAX_LIST_VALUES:
            raise RequestError(field, f"more than {MAX_LIST_VALUES} values")
    elif isinstance(raw, (list, dict)):
        raise RequestError(field, "takes a single value, not a list")
    else:
        items = [raw]
    parse = _PARSERS[f.value_type]
    return tuple(parse(field, item) for item in items)


def _sort_key(value_type: ValueType, value: str) -> Any:
    return Decimal(value) if value_type in (ValueType.NUMERIC, ValueType.INTEGER) else value


def _check_ranges(export_type: ExportType, normalised: dict[str, Any]) -> None:
    lower = {f.column: f for f in export_type.filters if f.op is Operator.MIN and f.name in normalised}
    for high in export_type.filters:
        low = lower.get(high.column)
        if low is None or not high.is_range or high.op is Operator.MIN or high.name not in normalised:
            continue
        low_value, high_value = str(normalised[low.name]), str(normalised[high.name])
        if _sort_key(low.value_type, low_value) > _sort_key(high.value_type, high_value):
            raise RequestError(
                f"filters.{high.name}", f"reversed range: {low.name}={low_value} is after {high.name}={high_value}"
            )


def check_filters(export_type: ExportType, filters: Any) -> tuple[dict[str, Any], tuple[Condition, ...]]:
    """Validate raw filters; return them normalised (for display and run config) and as conditions."""
    if filters is None:
        filters = {}
    if not isinstance(filters, Mapping):
        raise RequestError("filters", f"expected an object of filter names to values, got {type(filters).__name__}")
    normalised: dict[str, Any] = {}
    conditions: list[Condition] = []
    for name, raw in filters.items():
        f = export_type.filter(name) if isinstance(name, str) else None
        if f is None:
            known = ", ".join(x.name for x in export_type.filters)
            raise RequestError(f"filters.{cut(name)}", f"unknown filter for {export_type.name}; known: {known}")
        if raw is None:
            continue
        values = _filter_values(f, raw)
        typed = [int(v) for v in values] if f.value_type is ValueType.INTEGER else list(values)
        normalised[name] = typed if f.multi else typed[0]
        conditions.append(Condition(f.column, f.op, f.value_type, values, f.multi))
    _check_ranges(export_type, normalised)
    return normalised, tuple(conditions)
