"""One real Postgres per test session: `EXPORT_PLATFORM_DATABASE_URL` if set, else a throwaway
embedded server (pgserver) in a temp folder. The sample tables are seeded once, nasty rows
included; tests must not change them (bad-input tests check that nothing did)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import psycopg
import pytest

from export_platform.resources.database_url import DATABASE_URL_ENV
from export_platform.tooling.embedded_postgres import start_embedded
from export_platform.resources.postgres import PostgresResource
from export_platform.resources.requests import RequestStore
from export_platform.resources.storage import STORAGE_URL_ENV, LocalStorage
from export_platform.tooling.sample_data import seed

SEED_ROWS = 3_000


def pytest_configure(config: pytest.Config) -> None:
    """The session's database, in the environment before any test module is collected: modules
    import the code location, which requires the variable; commands and processes started by
    tests find the same server through it."""
    if not os.environ.get(DATABASE_URL_ENV):
        # pgserver stops the server and deletes this folder when the session's process exits.
        pgdata = Path(tempfile.mkdtemp(prefix="export_platform_tests_pg_"))
        os.environ[DATABASE_URL_ENV] = start_embedded(pgdata, cleanup_mode="delete")


@pytest.fixture(scope="session")
def database_url() -> str:
    url = os.environ[DATABASE_URL_ENV]
    with psycopg.connect(url, autocommit=True) as conn:
        seed(conn, SEED_ROWS)
    RequestStore(url=url).migrate()
    return url


@pytest.fixture(scope="session")
def storage_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("exports")
    os.environ[STORAGE_URL_ENV] = str(root)
    return root


@pytest.fixture
def app(stack):
    """The app database of the module's daemon stack (a module using this defines `stack`)."""
    with psycopg.connect(stack.app_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def db(database_url: str):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        yield conn


@pytest.fixture
def resources(database_url: str, storage_root: Path) -> dict:
    # A small batch hint, so that even the small test tables stream as many batches.
    return {
        "postgres": PostgresResource(url=database_url, batch_size_hint_bytes=64 * 1024),
        "storage": LocalStorage(root=str(storage_root)),
        "requests": RequestStore(url=database_url),
    }


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """A real S3-compatible server (moto) on a loopback port; AWS variables point every client at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION="us-east-1",
    )
    import boto3

    boto3.client("s3").create_bucket(Bucket="exports")
    yield endpoint
    server.stop()
