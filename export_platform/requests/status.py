"""The statuses of an export request, each declared once, here: what it means, what a person reads,
and which statuses it may become.

Everything else derives from this declaration: the table's CHECK constraint, its transition trigger
and index predicates (schema.py, which `migrate` brings any existing database up to), the guard of
every statement that moves a row (table.py), the sensors, the HTTP API, the status page and the
client. Adding a status is one new member below (docs/reference.md "Layout" shows the steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class Meaning:
    """What a status says about a request. Every flag is False unless the status says otherwise."""

    label: str  # what the end user's status page and the API's `status_label` show
    becomes: tuple[str, ...] = ()  # the statuses a row in this one may move to; any other move is refused
    initial: bool = False  # a new row's status (exactly one status is)
    waiting: bool = False  # not yet running: counted in the queue depth
    active: bool = False  # handed to Dagster: the sensor checks the run of a row quiet for long
    exporting: bool = False  # its run streams rows, reports progress and may publish the file
    stopping: bool = False  # a cancel was asked: the sensor stops the run, then the row is cancelled
    finished: bool = False  # for good: waiters and the status page stop following it
    delivered: bool = False  # its file can be downloaded, until retention or `delete` expires it
    failed: bool = False  # it ended on an error (the row's `error` says which); `wait` exits 1
    # Moving a finished row here is ignored (the UPDATE reports 0 rows) instead of refused: a cancel
    # may race the run's finish, and the row keeps telling the truth about its file.
    ignored_once_finished: bool = False
    note: str | None = None  # said on the status page besides the label


class Status(str, Enum):
    """A request's status; `Status.X.value` is what the row's `status` column holds."""

    meaning: Meaning

    def __new__(cls, value: str, meaning: Meaning):
        member = str.__new__(cls, value)
        member._value_, member.meaning = value, meaning
        return member

    PENDING = "PENDING", Meaning(
        "Waiting to start", initial=True, waiting=True,
        becomes=("QUEUED", "RUNNING", "FAILED", "CANCEL_REQUESTED", "CANCELLED"),
    )
    QUEUED = "QUEUED", Meaning(
        "Queued", waiting=True, active=True,
        becomes=("PENDING", "RUNNING", "FAILED", "CANCEL_REQUESTED", "CANCELLED"),
    )
    RUNNING = "RUNNING", Meaning(
        "Exporting", active=True, exporting=True, becomes=("COMPLETED", "FAILED", "CANCEL_REQUESTED", "CANCELLED")
    )
    COMPLETED = "COMPLETED", Meaning("Ready", finished=True, delivered=True, becomes=("EXPIRED",))
    FAILED = "FAILED", Meaning("Failed", finished=True, failed=True)
    CANCEL_REQUESTED = "CANCEL_REQUESTED", Meaning(
        "Cancelling", stopping=True, ignored_once_finished=True, becomes=("CANCELLED",)
    )
    CANCELLED = "CANCELLED", Meaning("Cancelled", finished=True)
    EXPIRED = "EXPIRED", Meaning("No longer available", finished=True, note="The file has been deleted.")

    @property
    def becomes(self) -> tuple[Status, ...]:
        return tuple(Status[name] for name in self.meaning.becomes)

    @property
    def sources(self) -> tuple[Status, ...]:
        """The statuses a row may come to this one from: the guard of the statement that moves it."""
        return tuple(s for s in Status if self in s.becomes)

    def shown(self) -> dict:
        """What the HTTP API and the status page say of a request's status, so that neither needs
        a list of statuses of its own."""
        meaning = self.meaning
        return {
            "status": self.value,
            "status_label": meaning.label,
            "finished": meaning.finished,
            "delivered": meaning.delivered,
            "failed": meaning.failed,
            "status_note": meaning.note,
        }

    @classmethod
    def where(cls, **flags: bool) -> tuple[Status, ...]:
        """The statuses whose meaning has these flags, e.g. `Status.where(finished=True)`."""
        return tuple(s for s in cls if all(getattr(s.meaning, flag) == wanted for flag, wanted in flags.items()))

    @classmethod
    def the(cls, **flags: bool) -> Status:
        """The one status with these flags (e.g. `Status.the(stopping=True)`, what a cancel moves a row to)."""
        (found,) = cls.where(**flags)
        return found

    @classmethod
    def values(cls, **flags: bool) -> list[str]:
        """What the `status` column holds for the statuses with these flags (all, without flags)."""
        return values_of(cls.where(**flags))


def values_of(statuses: tuple[Status, ...]) -> list[str]:
    return [s.value for s in statuses]


def spoken(statuses: tuple[Status, ...]) -> str:
    """`PENDING, QUEUED or RUNNING`: statuses in a message."""
    names = values_of(statuses)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def check_declaration() -> None:
    """Refuse (at import) a declaration the rest cannot derive from: a move to an unknown status,
    a finished status that moves on unless it is delivered (its file may still expire), or not
    exactly one initial status."""
    for status in Status:
        unknown = set(status.meaning.becomes) - set(Status.__members__)
        if unknown:
            raise TypeError(f"request status {status.name} becomes unknown statuses {sorted(unknown)}")
        if status.meaning.finished and status.becomes and not status.meaning.delivered:
            raise TypeError(f"request status {status.name} is finished, so it cannot become another")
    if len(Status.where(initial=True)) != 1:
        raise TypeError("exactly one request status must be initial")


check_declaration()
