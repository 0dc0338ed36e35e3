"""Turning a run's failure into a message a person can act on."""

from __future__ import annotations

from .dagster_compat import FAILURE_ERROR, STEP_ERROR_WRAPPER, SerializableErrorInfo


def root_message(error: SerializableErrorInfo) -> str:
    """The innermost cause, without Dagster's "error occurred while executing op" wrapper."""
    while error.message.startswith(STEP_ERROR_WRAPPER) and error.cause is not None:
        error = error.cause
    return error.message.strip().removeprefix(f"{FAILURE_ERROR}: ")
