"""One real Postgres per test session: `EXPORT_PLATFORM_DATABASE_URL` if set, else a throwaway
embedded server (pgserver) in a temp folder. The sample tables are seeded once, nasty rows
included; tests must not change them (bad-input tests check that nothing did).

The fixtures several modules use are here; the helpers they share are in tests/support/. Whatever
a fixture puts into the environment is taken out again when its scope ends (MonkeyPatch)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from export_platform.resources.database_url import DATABASE_URL_ENV
from export_platform.tooling.embedded_postgres import start_embedded
from export_platform.resources.postgres import PostgresResource
from export_platform.requests.store import RequestStore
from export_platform.resources.storage import STORAGE_URL_ENV, LocalStorage
from export_platform.tooling.sample_data import seed
from support.daemon_stack import running_webserver
from support.readback import database_beside

SEED_ROWS = 3_000
_SESSION_ENVIRONMENT = pytest.MonkeyPatch()


def pytest_configure(config: pytest.Config) -> None:
    """The session's database, in the environment before any test module is collected: modules
    import the code location, which requires the variable; commands and processes started by
    tests find the same server through it."""
    if not os.environ.get(DATABASE_URL_ENV):
        # pgserver stops the server and deletes this folder when the session's process exits.
        pgdata = Path(tempfile.mkdtemp(prefix="export_platform_tests_pg_"))
        _SESSION_ENVIRONMENT.setenv(DATABASE_URL_ENV, start_embedded(pgdata, cleanup_mode="delete"))


def pytest_unconfigure(config: pytest.Config) -> None:
    _SESSION_ENVIRONMENT.undo()


@pytest.fixture(scope="session")
def database_url() -> str:
    url = os.environ[DATABASE_URL_ENV]
    with psycopg.connect(url, autocommit=True) as conn:
        seed(conn, SEED_ROWS)
    RequestStore(url=url).migrate()
    return url


@pytest.fixture(scope="session")
def storage_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("exports")
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv(STORAGE_URL_ENV, str(root))  # for the code location's storage in processes tests start
        yield root


@pytest.fixture
def instance():
    """A Dagster test instance of the test's own."""
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def store(database_url: str) -> RequestStore:
    store = RequestStore(url=database_url)
    store.engine()  # the session migrated the table; this checks its version
    return store


@pytest.fixture
def incremental_db(database_url, storage_root) -> tuple[str, dict]:
    """A database of 500 users with the request table and no incremental marks, and the resources
    that read it."""
    url = database_beside(database_url, "incremental_check")
    with psycopg.connect(url, autocommit=True) as conn:
        seed(conn, 500, ("users",))
    store = RequestStore(url=url)
    store.migrate()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM export_watermarks")
    # No margin: these tests run one step after another, never racing a writer's clock read.
    return url, {"postgres": PostgresResource(url=url, incremental_margin_seconds=0), "requests": store}


@pytest.fixture
def app(stack):
    """The app database of the module's daemon stack (a module using this defines `stack`)."""
    with psycopg.connect(stack.app_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def graphql(stack):
    """The GraphQL API (what the Launchpad uses) of a webserver on the module's daemon stack."""
    with running_webserver(stack) as client:
        yield client


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
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible server (moto) on a loopback port; AWS variables point every client at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    environment = pytest.MonkeyPatch()
    for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        environment.setenv(name, value)
    import boto3

    boto3.client("s3").create_bucket(Bucket="exports")
    yield endpoint
    server.stop()
    environment.undo()
