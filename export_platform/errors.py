"""Turning a run's failure into a message a person can act on."""

from __future__ import annotations

from dagster._utils.error import SerializableErrorInfo

_WRAPPER_PREFIX = "dagster._core.errors.DagsterExecutionStepExecutionError"


def root_message(error: SerializableErrorInfo) -> str:
    """The innermost cause, without Dagster's "error occurred while executing op" wrapper."""
    while error.message.startswith(_WRAPPER_PREFIX) and error.cause is not None:
        error = error.cause
    return error.message.strip().removeprefix("dagster._core.definitions.events.Failure: ")
