"""The one error family (export_platform/errors.py): every error a person can see is an
ExportPlatformError, its meaning says the CLI's exit code and label, and docs/reference.md's table
says the same."""

from __future__ import annotations

import ast
import builtins
import re
import subprocess
import sys
from pathlib import Path

import pytest

import export_platform
from export_platform import errors
from export_platform.delivery.auth import ApiError
from export_platform.delivery.tokens import TokenError
from export_platform.errors import (
    BadInput,
    ConfigurationError,
    DatabaseError,
    DatabaseUnreachable,
    ExportFailed,
    ExportPlatformError,
    NotFound,
    Refused,
    TimedOut,
)
from export_platform.links import LinkError
from export_platform.planning.plan import RequestError
from export_platform.requests.api_keys import ApiKeyError
from export_platform.requests.table import SchemaMismatch
from export_platform.resources.database_url import DatabaseUrlMissing
from export_platform.resources.lost import ConnectionLost
from export_platform.resources.postgres import IncrementalRefused, StreamClosed
from export_platform.resources.storage import OutputRefused, StorageError
from export_platform.schedules.recurring import RecurringExportError
from export_platform.sinks.parts import StreamStopped
from export_platform.tooling import cli
from export_platform.tooling.cli import exports
from export_platform.tooling.instance import InstanceMissing
from export_platform.processes import free_port

PACKAGE = Path(export_platform.__file__).parent
REFERENCE = PACKAGE.parent / "docs" / "reference.md"

# class: (its meaning, exit code, the word before its message)
FAMILY = {
    RequestError: (BadInput, 2, "error"),
    ApiKeyError: (BadInput, 2, "error"),
    TokenError: (BadInput, 2, "error"),
    DatabaseUrlMissing: (ConfigurationError, 2, "error"),
    InstanceMissing: (ConfigurationError, 2, "error"),
    LinkError: (ConfigurationError, 2, "error"),
    RecurringExportError: (ConfigurationError, 2, "error"),
    Refused: (Refused, 1, "refused"),
    IncrementalRefused: (Refused, 1, "refused"),
    NotFound: (NotFound, 1, "error"),
    TimedOut: (TimedOut, 1, "error"),
    SchemaMismatch: (DatabaseError, 1, "error"),
    ConnectionLost: (DatabaseError, 1, "error"),
    DatabaseUnreachable: (DatabaseError, 1, "error"),
    StorageError: (StorageError, 1, "error"),
    OutputRefused: (StorageError, 1, "error"),
    ExportFailed: (ExportFailed, 1, "export failed"),
    StreamStopped: (ExportFailed, 1, "export failed"),
    StreamClosed: (ExportFailed, 1, "export failed"),
    ApiError: (ExportPlatformError, 1, "error"),
}
# Signals a program handles, never shown to a person; each docstring says why it stays outside.
OUTSIDE = {"Stopped": "tooling/dev.py", "Superseded": "ops/publish.py"}


@pytest.mark.parametrize("cls", FAMILY, ids=lambda c: c.__name__)
def test_each_error_has_its_meaning_exit_code_and_label(cls):
    meaning, exit_code, label = FAMILY[cls]
    assert issubclass(cls, meaning) and issubclass(cls, ExportPlatformError)
    assert (cls.exit_code, cls.label) == (exit_code, label)


def test_the_message_is_what_a_person_reads():
    error = RequestError("filters.lifetime_value_min", "expected a decimal number, got 'ten'")
    assert str(error) == "filters.lifetime_value_min: expected a decimal number, got 'ten'"
    assert error.shown() == "error: filters.lifetime_value_min: expected a decimal number, got 'ten'"
    assert Refused("request 7 is FAILED, not COMPLETED: it has no file").shown() == (
        "refused: request 7 is FAILED, not COMPLETED: it has no file")
    assert ExportFailed('UndefinedTable: relation "users" does not exist').shown() == (
        'export failed: UndefinedTable: relation "users" does not exist')
    hinted = ConfigurationError("DAGSTER_HOME is not set", hint="export DAGSTER_HOME=/srv/dagster")
    assert hinted.shown() == "error: DAGSTER_HOME is not set\nhint: export DAGSTER_HOME=/srv/dagster"
    assert str(hinted) == "DAGSTER_HOME is not set" and ApiError(404, "no export 7").hint is None


def test_callers_that_catch_a_builtin_base_still_do():
    # Input parsing is caught as ValueError (pydantic, applications); a missing row as LookupError.
    for cls in (RequestError, ApiKeyError, TokenError, RecurringExportError):
        assert issubclass(cls, ValueError), cls
    assert issubclass(NotFound, LookupError) and issubclass(TimedOut, TimeoutError)


def _exception_classes() -> dict[str, tuple[str, list[str]]]:
    """Every class of export_platform that derives, by its bases' names, from an exception:
    {name: (file, [base names])}. Read from the source, so nothing is imported or run."""
    classes: dict[str, tuple[str, list[str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]
                classes[node.name] = (path.relative_to(PACKAGE).as_posix(), bases)
    return classes


def outside_the_family(classes: dict[str, tuple[str, list[str]]]) -> list[str]:
    """The exception classes among `classes` that do not descend from ExportPlatformError."""
    def is_builtin_exception(name: str) -> bool:
        found = getattr(builtins, name, None)
        return isinstance(found, type) and issubclass(found, BaseException)

    def ancestry(name: str, seen: frozenset = frozenset()) -> set[str]:
        if name in seen or name not in classes:
            return {name}
        return {name}.union(*(ancestry(b, seen | {name}) for b in classes[name][1]))

    found = []
    for name in classes:
        if name == "ExportPlatformError":
            continue
        lineage = ancestry(name) - {name}
        if any(is_builtin_exception(b) for b in lineage) and "ExportPlatformError" not in lineage:
            found.append(f"{classes[name][0]}: {name}")
    return sorted(found)


def test_every_error_class_of_the_project_is_in_the_family():
    classes = _exception_classes()
    outside = [entry for entry in outside_the_family(classes) if entry.split(": ")[1] not in OUTSIDE]
    assert outside == []
    for name, file in OUTSIDE.items():  # the signals left outside are where they say, and say why
        node = next(n for n in ast.walk(ast.parse((PACKAGE / file).read_text()))
                    if isinstance(n, ast.ClassDef) and n.name == name)
        assert "outside errors.ExportPlatformError" in " ".join(ast.get_docstring(node).split()), name


def test_the_scan_finds_an_error_class_outside_the_family():
    # The check above would pass everything if the scan found nothing.
    classes = _exception_classes()
    assert {"RequestError", "ConnectionLost", "Stopped", "Superseded"} <= set(classes)
    classes["ExportTooLarge"] = ("planning/plan.py", ["RuntimeError"])
    classes["PdfTooLong"] = ("sinks/pdf.py", ["ExportTooLarge"])
    assert outside_the_family(classes) == sorted(
        ["planning/plan.py: ExportTooLarge", "sinks/pdf.py: PdfTooLong", "tooling/dev.py: Stopped",
         "ops/publish.py: Superseded"])


def test_the_family_is_one_tree():
    family = {cls for cls in FAMILY} | {
        obj for obj in vars(errors).values() if isinstance(obj, type) and issubclass(obj, BaseException)}
    for cls in family:
        if cls is ExportPlatformError:
            continue
        # One parent in the family (a built-in base such as ValueError may stand beside it).
        parents = [base for base in cls.__bases__ if issubclass(base, ExportPlatformError)]
        assert len(parents) == 1, (cls, parents)
    assert ExportPlatformError.__bases__ == (Exception,)


def _meanings() -> list[type[ExportPlatformError]]:
    return [obj for obj in vars(errors).values() if isinstance(obj, type) and issubclass(obj, ExportPlatformError)] + [
        StorageError]


def test_the_reference_lists_every_meaning_with_its_exit_code():
    text = REFERENCE.read_text()
    rows = dict(re.findall(r"^\| `(\w+)`[^|]*\| (\d) \|", text, re.MULTILINE))
    expected = {cls.__name__: str(cls.exit_code) for cls in _meanings()}
    assert {name: rows.get(name) for name in expected} == expected


@pytest.mark.parametrize("cls", sorted(set(_meanings()), key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_the_cli_prints_and_exits_by_class(cls, monkeypatch, capsys):
    def failing(args):
        raise cls("what went wrong, as a person reads it")

    monkeypatch.setattr(exports, "cmd_seed", failing)  # the parser takes the handler at each build
    assert cli.main(["seed", "--rows", "1"]) == cls.exit_code
    assert capsys.readouterr().err == f"{cls.label}: what went wrong, as a person reads it\n"


def test_the_cli_shows_an_unexpected_error_without_its_class_path(monkeypatch, capsys):
    def failing(args):
        raise KeyError("users")

    monkeypatch.setattr(exports, "cmd_seed", failing)
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    assert cli.main(["seed", "--rows", "1"]) == 1
    assert capsys.readouterr().err == f"error: 'users' ({cli.TRACEBACK_ENV}=1 shows where)\n"


def test_an_unreachable_database_is_said_in_a_line(tmp_path):
    # A port nothing listens on: the driver's error, wrapped by SQLAlchemy, read as a person would.
    url = f"postgresql://alice@127.0.0.1:{free_port()}/app"
    done = subprocess.run([sys.executable, "-m", "export_platform.tooling.cli", "list"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "EXPORT_PLATFORM_DATABASE_URL": url,
                               "EXPORT_PLATFORM_HOME": str(tmp_path)}, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot reach the database: connection failed:"), done.stderr
    assert "Traceback" not in done.stderr and "sqlalche" not in done.stderr
