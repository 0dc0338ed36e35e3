"""Short-lived user tokens: how a browser calls the HTTP API without ever holding an API key.

The application's back-end signs a JWT (HS256) for one of its users with its key's *token secret*:
header `kid` = the key id, claims `sub` = the user (`requested_by`), `exp` at most
`MAX_TOKEN_SECONDS` ahead. The token secret is derived from EXPORT_PLATFORM_SIGNING_KEY and the key
id, so the database holds nothing that signs a token; `export-platform api-key create` prints it
once. A token acts as its key for its user only, and dies with its key (revoked) or its `exp`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

import jwt

from ..errors import BadInput
from ..requests import api_keys
from ..links import Signer

ALGORITHM = "HS256"
MAX_TOKEN_SECONDS = 3600
# Clocks of the back-end and of `serve` may differ by this much.
LEEWAY_SECONDS = 30
MAX_TOKEN_LENGTH = 4096


class TokenError(BadInput, ValueError):
    """A token that is not acceptable; the message says why (the text of a 401)."""


@dataclass(frozen=True)
class UserToken:
    key_id: str
    requested_by: str


def token_secret(signer: Signer, key_id: str) -> str:
    """The secret an application signs its user tokens with (hex, 64 characters)."""
    return hmac.new(signer.key, f"user-token\n{key_id}".encode(), hashlib.sha256).hexdigest()


def mint(signer: Signer, key_id: str, requested_by: str, seconds: int = 900) -> str:
    """What a back-end does (docs/delivery.md shows it without this package)."""
    claims = {"sub": requested_by, "iat": int(time.time()), "exp": int(time.time()) + seconds}
    return jwt.encode(claims, token_secret(signer, key_id), algorithm=ALGORITHM, headers={"kid": key_id})


def key_id_of(token: str) -> str:
    """The key a token claims to be signed by (unverified: look the key up, then `verify`)."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenError("the token is too long")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenError("not a user token (a JWT) nor an API key") from None
    key_id = header.get("kid")
    if header.get("alg") != ALGORITHM or not api_keys.valid_key_id(key_id):
        raise TokenError(f"a user token is signed with {ALGORITHM} and names its key id in `kid`")
    return key_id


def verify(signer: Signer, token: str, key_id: str) -> UserToken:
    """The token's key and user, if its signature, `exp` and `sub` are good."""
    try:
        claims = jwt.decode(
            token, token_secret(signer, key_id), algorithms=[ALGORITHM], leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("the token has expired; ask the application for a new one") from None
    except jwt.PyJWTError as error:
        raise TokenError(f"the token is not valid: {error}") from None
    if claims["exp"] > time.time() + MAX_TOKEN_SECONDS + LEEWAY_SECONDS:
        raise TokenError(f"a user token may live at most {MAX_TOKEN_SECONDS} seconds")
    user = claims["sub"]
    if not api_keys.valid_user(user):
        raise TokenError("the token's `sub` must be the user's name (requested_by)")
    return UserToken(key_id, user)
