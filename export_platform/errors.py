"""The one error family: every error a person can see from this project is an `ExportPlatformError`.

A class says what went wrong by its meaning (bad input, configuration, refused, not found, timed
out, database, export failed; storage's is resources/storage.py's StorageError) and carries what the
CLI does with it: `exit_code` and `label` (the word before the message). `str(error)` is the
message a person reads, naming the field or setting at fault; `hint`, where given, says what to do
next. A caller catches one base (or one meaning); the CLI prints `error.shown()` and exits with
`error.exit_code`, whatever the class (docs/reference.md's exit-code table).

Each concrete class lives beside the code that raises it (RequestError in planning/values.py,
StorageError in resources/storage.py, ...), where its callers look for it, and derives from one
meaning here. Where callers may catch a built-in base (a `ValueError` from input parsing, a
`LookupError`, a `TimeoutError`), the class keeps it as a second base.

Control-flow signals that no person sees stay outside, each saying why in its docstring: dev.py's
`Stopped` (a signal that ends `dev` with 0), ops/publish.py's `Superseded` (publish stands down).

A foundation module: the standard library only, so the CLI's `--help` imports it at no cost.
"""

from __future__ import annotations

# The CLI's exit codes: 0 done, 1 failed or refused (retrying or waiting may help), 2 wrong as asked
# (the command, the request or the configuration must change first).
FAILED = 1
WRONG_AS_ASKED = 2


class ExportPlatformError(Exception):
    """An error of this project: `str(error)` is its message, `hint` what to do next (or None)."""

    exit_code = FAILED
    label = "error"

    def __init__(self, *args: object, hint: str | None = None):
        super().__init__(*args)
        self.hint = hint

    def shown(self) -> str:
        """The lines the CLI prints to stderr: `label: message`, then the hint if there is one."""
        line = f"{self.label}: {self}"
        return f"{line}\nhint: {self.hint}" if self.hint else line


class BadInput(ExportPlatformError):
    """A request, command or token that cannot be done as written; nothing was done or written.
    The message names the field at fault."""

    exit_code = WRONG_AS_ASKED


class ConfigurationError(ExportPlatformError):
    """This process lacks a setting it needs, or has one it cannot use (an environment variable, the
    Dagster instance, the signing key, recurring_exports.yaml); the message says what to set."""

    exit_code = WRONG_AS_ASKED


class Refused(ExportPlatformError):
    """A valid call that the present state does not allow: the request is not COMPLETED, its file
    expired, the database cannot show what an incremental bound needs. The message says why."""

    label = "refused"


class NotFound(ExportPlatformError, LookupError):
    """What was named (a request id) does not exist."""


class TimedOut(ExportPlatformError, TimeoutError):
    """A wait ended before what it waited for happened."""


class DatabaseError(ExportPlatformError):
    """The database went away, or is not as this release needs it (its request table's schema)."""


class DatabaseUnreachable(DatabaseError):
    """The database did not answer a new connection (the CLI's word for a driver's connection error)."""


class ExportFailed(ExportPlatformError):
    """An export's run failed; the message is its first failure, as a person reads it."""

    label = "export failed"
