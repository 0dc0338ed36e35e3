"""What a person typed, read as a value of its declared type, or refused with an error naming the field.

Every check of planning raises `RequestError`; the scalar readers here give filter values their
canonical text (bound as parameters, cast in SQL) and bound what a request may hold.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from ..errors import BadInput

MAX_TEXT_LENGTH = 1_000
_BIGINT = 2**63
# ASCII digits only: str.isdigit() also takes "²" and "٣", and int() takes "+-5"'s cousins.
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]{1,19}")
# JSON numbers longer than this are refused while params are decoded (Python refuses 4,300+ digits).
MAX_NUMBER_DIGITS = 100
_SHOWN = 60


class RequestError(BadInput, ValueError):
    """A request that cannot be exported as asked; `field` says which part is wrong."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def cut(text: str) -> str:
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


def shown(value: Any) -> str:
    """A value as an error message quotes it: its repr, cut short."""
    return cut(repr(value))


def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_DIGITS:
        raise RequestError("params", f"holds a number of {len(text):,} digits; at most {MAX_NUMBER_DIGITS} are read")
    return int(text)


def decode_params(text: str | None) -> Any:
    """A request row's params from their JSON text, with an error naming `params` for JSON that
    Postgres stores but Python cannot read."""
    if text is None:
        return None
    try:
        return json.loads(text, parse_int=_bounded_int)
    except RecursionError:
        raise RequestError("params", "nested too deeply to read") from None


def text(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise RequestError(field, f"expected text, got {type(value).__name__} {shown(value)}")
    if len(value) > MAX_TEXT_LENGTH:
        raise RequestError(field, f"value longer than {MAX_TEXT_LENGTH} characters")
    if "\x00" in value:
        raise RequestError(field, "value contains a NUL character")
    return value


def integer(field: str, value: Any) -> str:
    if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not -_BIGINT <= value < _BIGINT:
        raise RequestError(field, f"expected a whole number (64-bit), got {shown(value)}")
    return str(value)


def numeric(field: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise RequestError(field, f"expected a decimal number, got {type(value).__name__} {shown(value)}")
    written = str(value).strip()
    try:
        if not written.isascii() or len(written) > MAX_NUMBER_DIGITS:
            raise InvalidOperation
        number = Decimal(written)
    except InvalidOperation:
        raise RequestError(field, f"expected a decimal number, got {shown(value)}") from None
    if not number.is_finite() or abs(number.adjusted()) > 100:
        raise RequestError(field, f"expected a finite decimal number, got {shown(value)}")
    return str(number)


def date(field: str, value: Any) -> str:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value.isoformat()
    try:
        if isinstance(value, str) and len(value) == 10:
            return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        pass
    raise RequestError(field, f"expected a date as YYYY-MM-DD, got {shown(value)}")
