"""Warm run workers: a run launcher that hands runs to long-lived worker processes through a
launch queue in Dagster's Postgres, the workers, and the supervisor that keeps them alive.
See docs/deploy.md ("Warm run workers")."""
