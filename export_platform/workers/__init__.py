"""Warm run workers: a run launcher that hands runs to long-lived worker processes through a
launch queue in Dagster's Postgres, the workers, and the supervisor that keeps them alive.
See docs/deploy.md ("Warm run workers")."""

import logging


def log_to_stderr() -> None:
    """The pool's own INFO lines, and only warnings from the libraries beneath it: with the root
    logger at INFO, alembic alone wrote 7 "setup plugin" lines each time a worker opened Dagster's
    storage (its `alembic.runtime.plugins` logs each plugin it loads at INFO)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("export_platform").setLevel(logging.INFO)
