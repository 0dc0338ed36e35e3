"""What an end user (the status page, a browser holding a user token) may read of a request's failure."""

from __future__ import annotations

from ..planning.config import ExportOptions

# The fields a refused request's error names (its first word): the user's own input.
REQUEST_FIELDS = frozenset({"params", "export_type", "format", "filters", "columns", "chunks", *ExportOptions.model_fields})


def public_error(row: dict) -> str | None:
    """What the end user reads of a failure. A refused request's error names the field and what
    to do, and is theirs to see; any other (it can hold hosts, paths, run ids) stays on the row for
    operators, and the user is told which request to quote."""
    error = row["error"]
    if not error:
        return None
    field = error.partition(": ")[0]
    if field.split(".", 1)[0] in REQUEST_FIELDS:
        return error
    return f"The export failed on our side. Please try again later; if it fails again, quote request {row['id']}."
