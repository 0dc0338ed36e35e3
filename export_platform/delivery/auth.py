"""Who calls the HTTP API, and how often they may.

`Authorization: Bearer <API key>` (a back-end) or `Bearer <user token>` (a browser, with a token
its application's back-end signed: tokens.py). Anything else, a revoked key included, is a 401
that says what is wrong and changes nothing. Each key has a rate (requests a minute): a token
bucket per key, and per user within a key for tokens, so one user's browser cannot use up the
application's whole allowance. The buckets live in the `serve` process: with several replicas,
each enforces the rate on the requests it receives.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import sqlalchemy as sa

from ..errors import ExportPlatformError
from ..planning.plan import RequestError
from ..requests import api_keys
from ..requests.api_keys import ApiKey
from . import tokens
from ..links import Signer

BEARER = {"www-authenticate": 'Bearer realm="export_platform"'}


class ApiError(ExportPlatformError):
    """An answer other than success: its HTTP status, what to do, and the field at fault if any."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers or {}


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, headers=BEARER)


def check_user(field: str, value: object) -> str:
    if not api_keys.valid_user(value):
        raise RequestError(field, f"expected a user name of 1 to {api_keys.MAX_USER_LENGTH} characters, without "
                           "control characters, e.g. alice@example.com")
    return value


@dataclass(frozen=True)
class Caller:
    key: ApiKey
    token_user: str | None = None  # set when the caller is a browser with a user token

    @property
    def user(self) -> str | None:
        """The only user this caller may act for; None: a trusted key, any."""
        return self.token_user or self.key.requested_by

    @property
    def scope(self) -> str | None:
        """Whose requests it sees among its key's: a token, its user's only; a key, all of them."""
        return self.token_user


class Authenticator:
    def __init__(self, signer: Signer):
        self.signer = signer

    def caller(self, conn: sa.Connection, authorization: str | None) -> Caller:
        """The caller, its key read on `conn` (on every request: a revoked key is refused at once)."""
        scheme, _, credential = (authorization or "").partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise _unauthorized("send `Authorization: Bearer <API key or user token>`")
        if api_keys.looks_like_key(credential):
            parsed = api_keys.parse(credential)
            key = api_keys.verified(conn.execute(api_keys.active(parsed[0])).first(), parsed[1]) if parsed else None
            if key is None:
                raise _unauthorized("this API key is not valid, or has been revoked")
            return Caller(key)
        try:
            key_id = tokens.key_id_of(credential)
            row = conn.execute(api_keys.active(key_id)).first()
            if row is None:
                raise tokens.TokenError("the token's key is unknown or has been revoked")
            user = tokens.verify(self.signer, credential, key_id).requested_by
        except tokens.TokenError as error:
            raise _unauthorized(str(error)) from None
        key = api_keys.key_of(row)
        if key.requested_by is not None and user != key.requested_by:
            raise _unauthorized(f"this key's tokens act for {key.requested_by} only")
        return Caller(key, user)


class RateLimiter:
    """Token buckets: `rate_per_minute` requests in a burst, refilled at that rate."""

    MAX_BUCKETS = 100_000

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str | None], tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, caller: Caller) -> None:
        rate = caller.key.rate_per_minute
        bucket = (caller.key.key_id, caller.token_user)
        with self._lock:
            now = time.monotonic()
            tokens_left, then = self._buckets.get(bucket, (rate, now))
            tokens_left = min(rate, tokens_left + (now - then) * rate / 60)
            if tokens_left < 1:
                self._buckets[bucket] = (tokens_left, now)
                wait = math.ceil((1 - tokens_left) * 60 / rate)
                raise ApiError(429, f"more than {rate} requests a minute with this key; retry in {wait} s",
                               headers={"retry-after": str(wait)})
            if len(self._buckets) >= self.MAX_BUCKETS:  # forget the buckets a minute idle: they are full again
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
            self._buckets[bucket] = (tokens_left - 1, now)
