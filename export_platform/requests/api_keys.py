"""API keys of the HTTP API (`export-platform api-key …`), and which key made which request.

A key is `epk_<key id>_<secret>`. The database keeps the key id and the SHA-256 of the secret,
never the secret: 32 random bytes cannot be guessed from their hash, and a fast hash keeps the
check off the request's latency (a password hash is for secrets people choose). A key either fixes
`requested_by` (one user's application) or is trusted to set it (a back-end acting for its users).

`export_api_requests` ties each request made through the API to its key: a caller sees and changes
only those rows. Requests inserted with SQL belong to no key. Migrated like `export_requests`: its
version is the `export_api_keys` component of `export_platform_schema`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

from . import table as rt
from ..errors import BadInput

COMPONENT = "export_api_keys"
PREFIX = "epk"
DEFAULT_RATE_PER_MINUTE = 600
_KEY = re.compile(rf"{PREFIX}_(?P<id>[0-9a-f]{{12}})_(?P<secret>[A-Za-z0-9_-]{{43}})")
_KEY_ID = re.compile(r"[0-9a-f]{12}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,62}")

metadata = sa.MetaData()
_now = sa.text("now()")

api_keys = sa.Table(
    "export_api_keys",
    metadata,
    sa.Column("key_id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("secret_sha256", sa.Text, nullable=False),
    # NULL: trusted to set requested_by on each request (and in the user tokens it signs).
    sa.Column("requested_by", sa.Text),
    sa.Column("rate_per_minute", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint("rate_per_minute > 0", name="export_api_keys_rate_check"),
)

api_requests = sa.Table(
    "export_api_requests",
    metadata,
    sa.Column("request_id", sa.BigInteger, sa.ForeignKey(rt.export_requests.c.id, ondelete="CASCADE"), primary_key=True),
    sa.Column("key_id", sa.Text, sa.ForeignKey(api_keys.c.key_id), nullable=False),
    # A caller's listing, newest first.
    sa.Index("export_api_requests_by_key", "key_id", sa.column("request_id").desc()),
)

# Upgrade steps, as in requests/table.py: UPGRADES[i] takes version i + 1 to i + 2.
UPGRADES: list[Callable[[sa.Connection], None]] = []
SCHEMA_VERSION = 1 + len(UPGRADES)


def migrate(conn: sa.Connection) -> int:
    """Create or upgrade the API's tables (after export_requests, which they refer to)."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('export_platform_schema'))"))
    metadata.create_all(conn, checkfirst=True)
    versions = rt.schema_versions
    current = conn.execute(sa.select(versions.c.version).where(versions.c.component == COMPONENT)).scalar()
    if current is None:
        current = SCHEMA_VERSION
        conn.execute(versions.insert().values(component=COMPONENT, version=current))
    if current > SCHEMA_VERSION:
        raise rt.SchemaMismatch(
            f"{COMPONENT} is at schema version {current}, newer than this release knows ({SCHEMA_VERSION}): "
            "upgrade export_platform here before it serves this database"
        )
    for step in UPGRADES[current - 1 :]:
        step(conn)
    conn.execute(versions.update().where(versions.c.component == COMPONENT).values(version=SCHEMA_VERSION))
    return SCHEMA_VERSION


class ApiKeyError(BadInput, ValueError):
    """An `api-key` command that cannot be done as asked; the message says why."""


@dataclass(frozen=True)
class NewKey:
    key_id: str
    secret: str

    @property
    def token(self) -> str:
        """What the application sends: `Authorization: Bearer <token>`."""
        return f"{PREFIX}_{self.key_id}_{self.secret}"


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    requested_by: str | None
    rate_per_minute: int


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key() -> NewKey:
    return NewKey(secrets.token_hex(6), secrets.token_urlsafe(32))


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ApiKeyError(f"a key's name is 1 to 63 letters, digits, '.', '_', '@' or '-', starting with a letter or "
                        f"digit; got {name!r}")
    return name


def create(name: str, requested_by: str | None, rate_per_minute: int) -> tuple[NewKey, sa.Insert]:
    if rate_per_minute <= 0:
        raise ApiKeyError(f"the rate must be a positive number of requests per minute, got {rate_per_minute}")
    key = new_key()
    statement = api_keys.insert().values(
        key_id=key.key_id, name=check_name(name), secret_sha256=_sha256(key.secret), requested_by=requested_by,
        rate_per_minute=rate_per_minute,
    )
    return key, statement


MAX_USER_LENGTH = 320  # the longest e-mail address


def valid_user(value: object) -> bool:
    """A `requested_by` as an API caller may name one (the table takes any text; a row cannot hold
    NUL or lone surrogates, and control characters are no one's name)."""
    return (
        isinstance(value, str) and bool(value.strip()) and len(value) <= MAX_USER_LENGTH
        and not any(ord(c) < 32 or 0xD800 <= ord(c) <= 0xDFFF for c in value)
    )


def valid_key_id(value: object) -> bool:
    return isinstance(value, str) and _KEY_ID.fullmatch(value) is not None


def parse(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    match = _KEY.fullmatch(token)
    return (match["id"], match["secret"]) if match else None


def looks_like_key(token: str) -> bool:
    return token.startswith(f"{PREFIX}_")


def active(key_id: str) -> sa.Select:
    return sa.select(api_keys).where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))


def verified(row, secret: str) -> ApiKey | None:
    """The key of `row` if `secret` is its secret (compared in constant time)."""
    if row is None or not hmac.compare_digest(row.secret_sha256, _sha256(secret)):
        return None
    return key_of(row)


def key_of(row) -> ApiKey:
    return ApiKey(row.key_id, row.name, row.requested_by, row.rate_per_minute)


def listing() -> sa.Select:
    return sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.name)


def revoke(name_or_id: str) -> sa.Update:
    return (
        api_keys.update()
        .where(sa.or_(api_keys.c.name == name_or_id, api_keys.c.key_id == name_or_id), api_keys.c.revoked_at.is_(None))
        .values(revoked_at=_now)
        .returning(api_keys.c.key_id, api_keys.c.name)
    )


def by_name(name: str) -> sa.Select:
    return sa.select(api_keys).where(api_keys.c.name == name)


# --- Requests made through the API.

IDEMPOTENCY_PREFIX = "api:"


def stored_idempotency_key(key_id: str, client_key: str | None) -> str | None:
    """The row's idempotency key: the client's, within its API key, so that two applications that
    pick the same key for the same user still get a request each."""
    return None if client_key is None else f"{IDEMPOTENCY_PREFIX}{key_id}:{client_key}"


def client_idempotency_key(key_id: str, stored: str | None) -> str | None:
    prefix = f"{IDEMPOTENCY_PREFIX}{key_id}:"
    return stored.removeprefix(prefix) if stored and stored.startswith(prefix) else None


def own(request_id: int, key_id: str) -> sa.Insert:
    return api_requests.insert().values(request_id=request_id, key_id=key_id)


def owned(key_id: str, requested_by: str | None) -> sa.Select:
    """The caller's requests: its key's, and with a user token only that user's."""
    t = rt.export_requests
    query = sa.select(t).join(api_requests, api_requests.c.request_id == t.c.id).where(api_requests.c.key_id == key_id)
    return query if requested_by is None else query.where(t.c.requested_by == requested_by)


def owned_one(request_id: int, key_id: str, requested_by: str | None) -> sa.Select:
    return owned(key_id, requested_by).where(rt.export_requests.c.id == request_id)


def owned_page(key_id: str, requested_by: str | None, limit: int, before: int | None) -> sa.Select:
    """Newest first; `before` is the last id of the previous page (keyset paging: a page never
    repeats or skips a row while new requests arrive)."""
    query = owned(key_id, requested_by).order_by(api_requests.c.request_id.desc()).limit(limit)
    return query if before is None else query.where(api_requests.c.request_id < before)
