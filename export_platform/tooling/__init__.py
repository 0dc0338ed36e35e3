"""Local and operator tooling: the CLI, dev, the Dagster instance, the embedded Postgres, sample data."""
