"""Helpers the test modules share (fixtures are in tests/conftest.py); no test module imports another.

- `readback`: run an export job in-process, read its file back, compare with the table; databases beside the session's.
- `request_rows`: the request table from a test's side: insert a row, read it back, tick the request sensor.
- `daemon_stack`: a real Dagster deployment (DAGSTER_HOME, and `dev`'s run workers, code server and daemon) for end-to-end tests.
- `dev_server`: `export-platform dev` as a user starts it.
- `serve_stack`: a real `export-platform serve` (as `dev` starts it) and a raw HTTP client.
"""
