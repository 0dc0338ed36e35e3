"""The HTTP API from an application's side: keys made as `api-key create` makes them, and calls
sent raw (so that tests can send what no well-behaved client would)."""

from __future__ import annotations

import http.client
import json
import uuid
from dataclasses import dataclass

from export_platform.links import Signer
from export_platform.delivery.tokens import mint
from export_platform.requests import api_keys
from export_platform.requests.store import RequestStore


@dataclass(frozen=True)
class Key:
    key_id: str
    token: str  # what goes after `Bearer`


def new_key(url: str, user: str | None = "alice@example.com", rate_per_minute: int = 6000, name: str = "app") -> Key:
    """A fresh API key in the database of `url`: for `user`, or trusted (user None)."""
    key, statement = api_keys.create(f"{name}-{uuid.uuid4().hex[:8]}", user, rate_per_minute)
    RequestStore(url=url).run(statement)
    return Key(key.key_id, key.token)


def user_token(signer: Signer, key: Key, user: str, seconds: int = 900) -> Key:
    return Key(key.key_id, mint(signer, key.key_id, user, seconds))


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self):
        return json.loads(self.body)

    @property
    def error(self) -> str:
        return self.json["error"]


def call(port: int, method: str, path: str, body=None, key: Key | str | None = None, headers: dict | None = None,
         raw: bytes | None = None) -> Answer:
    """One request; `body` is sent as JSON, `raw` as it is."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    sent = {"content-type": "application/json"} if body is not None or raw is not None else {}
    if key is not None:
        sent["authorization"] = f"Bearer {key.token if isinstance(key, Key) else key}"
    sent.update(headers or {})
    payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    try:
        conn.request(method, path, body=payload, headers=sent)
        response = conn.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()
