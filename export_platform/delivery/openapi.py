"""The HTTP API's OpenAPI 3.1 document, served at /api/v1/openapi.json.

Built from what the API checks requests against, so it cannot drift from it: one request schema
per export type from the registry (its filters and columns), the formats, and the export options'
own pydantic model (the one `plan_request` validates with).
"""

from __future__ import annotations

from typing import Any

from ..catalog.export_types import REGISTRY
from ..catalog.formats import ExportFormat
from ..catalog.registry import ExportType, Filter, ValueType
from ..planning.config import ExportOptions
from ..requests.status import Status, spoken

_REF = "#/components/schemas/{model}"
_VALUES: dict[ValueType, dict] = {
    ValueType.TEXT: {"type": "string"},
    ValueType.INTEGER: {"oneOf": [{"type": "integer"}, {"type": "string", "pattern": "^[+-]?[0-9]{1,19}$"}]},
    ValueType.NUMERIC: {"oneOf": [{"type": "number"}, {"type": "string"}], "description": "exact decimal: "
                        "send it as a string (\"12.50\") to keep every digit"},
    ValueType.DATE: {"type": "string", "format": "date"},
}


def _ref(name: str) -> dict:
    return {"$ref": _REF.format(model=name)}


def _filter(f: Filter) -> dict:
    value = _VALUES[f.value_type]
    if not f.multi:
        return {**value, "description": f.description}
    return {"description": f"{f.description}: one value, a list, or comma-separated text",
            "oneOf": [value, {"type": "array", "items": value, "minItems": 1, "maxItems": 10_000}]}


def _new_export(t: ExportType) -> dict:
    return {
        "type": "object",
        "description": t.description,
        "required": ["export_type"],
        "additionalProperties": False,
        "properties": {
            "export_type": {"const": t.name},
            "format": {"enum": [f.value for f in ExportFormat] + [f.name for f in ExportFormat if f.name != f.value],
                       "default": "csv"},
            "filters": {"type": "object", "additionalProperties": False,
                        "properties": {f.name: _filter(f) for f in t.filters}},
            "columns": {"type": "array", "items": {"enum": list(t.columns)}, "uniqueItems": True,
                        "description": "in this order; default: " + ", ".join(t.default_columns or t.columns)},
            "options": _ref("ExportOptions"),
            "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 200,
                                "description": "the same key (for the same user) again returns the first request"},
            "requested_by": {"type": "string", "minLength": 1, "maxLength": 320,
                             "description": "whom the export is for: required with a trusted key, else the key's or "
                             "the token's user (any other is a 403)"},
        },
    }


_STOPPING = Status.the(stopping=True)
_NULLABLE_INT = {"type": ["integer", "null"]}
_NULLABLE_TEXT = {"type": ["string", "null"]}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_EXPORT = {
    "type": "object",
    "required": ["id", "export_type", "format", "status", "status_url", "events_url"],
    "properties": {
        "id": {"type": "integer"},
        "export_type": {"type": "string"},
        "format": {"type": "string"},
        "filters": {"type": ["object", "null"]},
        "columns": {"type": ["array", "null"], "items": {"type": "string"}},
        "options": {"type": "object"},
        "requested_by": _NULLABLE_TEXT,
        "idempotency_key": _NULLABLE_TEXT,
        "status": {"enum": Status.values(), "description": "; ".join(f"{s.value}: {s.meaning.label}" for s in Status)},
        "status_label": {"type": "string", "description": "the status as the end user's status page says it"},
        "finished": {"type": "boolean", "description": "the status is final: stop following the export"},
        "delivered": {"type": "boolean", "description": "the file can be downloaded (download_url)"},
        "failed": {"type": "boolean", "description": "the export ended on an error (error)"},
        "status_note": {**_NULLABLE_TEXT, "description": "what the status page says besides status_label"},
        "progress_pct": {"type": ["number", "null"]},
        "progress_rows": _NULLABLE_INT,
        "total_rows": _NULLABLE_INT,
        "row_count": _NULLABLE_INT,
        "file_bytes": _NULLABLE_INT,
        "sha256": _NULLABLE_TEXT,
        "download_url": {**_NULLABLE_TEXT, "description": "signed, valid 1 h from this answer; while `delivered`"},
        "expires_at": {**_NULLABLE_TIME, "description": "when retention deletes the file"},
        "error": _NULLABLE_TEXT,
        "created_at": _NULLABLE_TIME,
        "started_at": _NULLABLE_TIME,
        "finished_at": _NULLABLE_TIME,
        "status_url": {"type": "string", "description": "this export in the API (GET)"},
        "status_page_url": {"type": "string", "description": "a page for the end user, signed, valid 1 h"},
        "events_url": {"type": "string", "description": "server-sent events of its status, signed, valid 1 h: "
                       "no header needed (EventSource)"},
    },
}
_ERROR = {
    "type": "object",
    "required": ["error", "field"],
    "properties": {
        "error": {"type": "string", "description": "what is wrong; for a 422 the very text the request row's "
                  "`error` would hold"},
        "field": {**_NULLABLE_TEXT, "description": "the field at fault, e.g. filters.country_code"},
    },
}


def _answer(description: str, schema: str = "Error") -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


_AUTH_ERRORS = {
    "401": _answer("no, a malformed, revoked or forged API key or user token; an expired token"),
    "429": _answer("more requests than the key's rate; `Retry-After` says when to try again"),
}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
_NOT_YOURS = _answer("no such export, or one this caller did not make (the same answer)")


def document(prefix: str) -> dict[str, Any]:
    options = ExportOptions.model_json_schema(ref_template=_REF)
    schemas = {**options.pop("$defs"), "ExportOptions": options}
    schemas.update({f"NewExport_{t.name}": _new_export(t) for t in REGISTRY})
    schemas["NewExport"] = {
        "oneOf": [_ref(f"NewExport_{name}") for name in REGISTRY.names()],
        "discriminator": {"propertyName": "export_type",
                          "mapping": {name: _REF.format(model=f"NewExport_{name}") for name in REGISTRY.names()}},
    }
    schemas.update({"Export": _EXPORT, "Error": _ERROR, "ExportList": {
        "type": "object", "required": ["exports", "next_cursor"],
        "properties": {"exports": {"type": "array", "items": _ref("Export")},
                       "next_cursor": {**_NULLABLE_TEXT, "description": "pass as `cursor` for the next page"}},
    }})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "export_platform",
            "version": "1",
            "description": "Request exports, follow them, download, list, cancel and delete them. Every request "
            "becomes a row of export_requests, checked as the request sensor checks rows. docs/delivery.md "
            "describes the keys and user tokens.",
        },
        "servers": [{"url": prefix}],
        "security": [{"bearer": []}],
        "paths": {
            "/exports": {
                "post": {
                    "summary": "Request an export",
                    "operationId": "createExport",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("NewExport")}}},
                    "responses": {
                        "202": {**_answer("accepted: a PENDING request (or, with an idempotency_key used before, that "
                                          "first request; header Idempotent-Replayed: true)", "Export"),
                                "headers": {"Location": {"schema": {"type": "string"}}}},
                        "400": _answer("the body is not JSON, not UTF-8, nested too deeply or holds a number of more "
                                       "than 100 digits"),
                        **_AUTH_ERRORS,
                        "403": _answer("requested_by names a user this key or token does not act for"),
                        "409": _answer("the idempotency_key names a request this caller did not make"),
                        "413": _answer("a body over 1 MiB"),
                        "415": _answer("a Content-Type other than application/json"),
                        "422": _answer("a request the export type cannot take: the field and why"),
                    },
                },
                "get": {
                    "summary": "The caller's exports, newest first",
                    "operationId": "listExports",
                    "parameters": [
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100,
                                                                     "default": 20}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"},
                         "description": "next_cursor of the previous page"},
                        {"name": "requested_by", "in": "query", "schema": {"type": "string"},
                         "description": "only this user's (a trusted key's filter)"},
                    ],
                    "responses": {"200": _answer("a page", "ExportList"), **_AUTH_ERRORS,
                                  "403": _answer("requested_by names a user this caller does not act for"),
                                  "422": _answer("a limit or cursor that is not a whole number in range")},
                },
            },
            "/exports/{id}": {
                "parameters": [_ID],
                "get": {
                    "summary": "An export's status, progress and result",
                    "operationId": "getExport",
                    "responses": {"200": _answer("the export", "Export"), **_AUTH_ERRORS, "404": _NOT_YOURS},
                },
                "delete": {
                    "summary": "Delete a completed export's file (the export becomes EXPIRED)",
                    "operationId": "deleteExport",
                    "responses": {
                        "200": _answer("deleted, or already EXPIRED", "Export"), **_AUTH_ERRORS, "404": _NOT_YOURS,
                        "409": _answer("no file: the export is still running (cancel it) or ended without one"),
                        "503": _answer("the storage could not delete the file; nothing changed (Retry-After)"),
                    },
                },
            },
            "/exports/{id}/cancel": {
                "parameters": [_ID],
                "post": {
                    "summary": f"Cancel a {spoken(_STOPPING.sources)} export",
                    "operationId": "cancelExport",
                    "responses": {
                        "202": _answer(f"{_STOPPING.value}: the run is being stopped", "Export"),
                        "200": _answer(f"already {spoken(_STOPPING.becomes)}", "Export"),
                        **_AUTH_ERRORS, "404": _NOT_YOURS,
                        "409": _answer("already finished otherwise: nothing to cancel"),
                    },
                },
            },
            "/openapi.json": {
                "get": {"summary": "This document", "operationId": "openapi", "security": [],
                        "responses": {"200": {"description": "OpenAPI 3.1"}}},
            },
        },
        "components": {
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "An API key (`epk_…`, from `export-platform api-key create`) or a user token (a "
                "JWT, HS256, signed with the key's token secret: `kid` = key id, `sub` = user, `exp` ≤ 1 h).",
            }},
            "schemas": schemas,
        },
    }
