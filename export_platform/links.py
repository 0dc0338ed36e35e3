"""Signed, expiring links to what `export-platform serve` delivers: the local counterpart of an S3
presigned URL.

A link carries `expires` (Unix seconds) and `sig`, an HMAC-SHA256 over what it opens (one file of
the storage, or one request's status page) and that expiry, under EXPORT_PLATFORM_SIGNING_KEY.
Nothing else is trusted: a link for one file or one request opens nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from urllib.parse import quote, urlencode

from .errors import ConfigurationError
from .home import platform_home

PUBLIC_URL_ENV = "EXPORT_PLATFORM_PUBLIC_URL"
SIGNING_KEY_ENV = "EXPORT_PLATFORM_SIGNING_KEY"
MIN_KEY_BYTES = 16

# A key whose characters take few values is a placeholder, not a secret ("aaaa…", blanks, "ab12ab12…").
MIN_DISTINCT_CHARACTERS = 5
# Unix seconds as a link carries them: ASCII digits only (`str.isdigit` also accepts "²" and "٣",
# which `int` then refuses), and few enough for `int` (which refuses 4,300+ digits).
_EXPIRES = re.compile(r"[0-9]{1,12}")
# users-20261125T101010Z-1a2b3c4d.csv.gz → users-2026-11-25.csv.gz
_STORED_NAME = re.compile(r"(?P<type>.+)-(?P<y>\d{4})(?P<m>\d\d)(?P<d>\d\d)T\d{6}Z-[0-9a-f]{8}\.(?P<ext>.+)")


class LinkError(ConfigurationError):
    """No usable signing key or public URL for a signed link; the message says what to set."""


class Kind(str, Enum):
    """What a signature opens; part of the signed message, so one kind never opens another."""

    file = "file"
    request = "request"


@dataclass(frozen=True)
class Signer:
    key: bytes

    @classmethod
    def from_env(cls) -> Signer:
        """The configured key; never a default one (demo, dev and tests set it themselves)."""
        key = os.environ.get(SIGNING_KEY_ENV, "")
        if weakness := _weakness(key):
            raise LinkError(
                f"{SIGNING_KEY_ENV} {weakness}: use a random secret of at least {MIN_KEY_BYTES} bytes "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        return cls(key.encode())

    def signature(self, kind: Kind, subject: str, expires: int) -> str:
        message = f"{kind.value}\n{subject}\n{expires}".encode(errors="surrogatepass")
        digest = hmac.new(self.key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def query(self, kind: Kind, subject: str, seconds: int) -> str:
        expires = int(time.time()) + seconds
        return urlencode({"expires": expires, "sig": self.signature(kind, subject, expires)})

    def check(self, kind: Kind, subject: str, expires: str | None, sig: str | None) -> str | None:
        """None if the link is good, else why not (the text of a 403). Whatever the two values
        hold (a query string is anyone's to write), this answers and never raises."""
        if not expires or not sig or not _EXPIRES.fullmatch(expires) or not sig.isascii():
            return "this link is not signed"
        if not hmac.compare_digest(self.signature(kind, subject, int(expires)).encode(), sig.encode()):
            return "this link's signature is not valid"
        if int(expires) < time.time():
            return "this link has expired; ask for a new one"
        return None


def seconds_left(expires: str) -> int:
    """Seconds until a checked link's `expires`."""
    return max(0, int(expires) - int(time.time()))


def _weakness(key: str) -> str | None:
    """Why a signing key is unfit, if it is: missing, short, blank, or guessable from its shape
    (one string repeated, a handful of distinct characters). Not a strength meter: a random key
    passes, and the checks catch the placeholders people paste."""
    if not key:
        return "must be set to sign download links"
    if len(key.encode()) < MIN_KEY_BYTES:
        return f"is too short: use at least {MIN_KEY_BYTES} bytes"
    if not key.strip():
        return "is blank"
    if (key + key).find(key, 1) < len(key) or len(set(key)) < MIN_DISTINCT_CHARACTERS:
        return "looks guessable (a repeated pattern or few distinct characters)"
    return None


def public_url() -> str | None:
    url = os.environ.get(PUBLIC_URL_ENV)
    return url.rstrip("/") if url else None


def file_url(base: str, signer: Signer, key: str, seconds: int) -> str:
    return f"{base}/files/{quote(key)}?{signer.query(Kind.file, key, seconds)}"


def status_page_url(request_id: int, seconds: int, base: str | None = None, signer: Signer | None = None) -> str:
    """The end user's page for one request: its progress, then its download."""
    base = public_url() if base is None else base
    if base is None:
        raise LinkError(f"{PUBLIC_URL_ENV} is not set: it is the address at which `export-platform serve` is reached")
    signer = signer or Signer.from_env()
    return f"{base}/requests/{request_id}?{signer.query(Kind.request, str(request_id), seconds)}"


def friendly_name(key: str) -> str:
    """The name a browser saves the file as: the export type and date, e.g. users-2026-11-25.csv.gz."""
    name = key.rsplit("/", 1)[-1]
    match = _STORED_NAME.fullmatch(name)
    return f"{match['type']}-{match['y']}-{match['m']}-{match['d']}.{match['ext']}" if match else name


def dev_key_file() -> Path:
    return platform_home() / "signing-key"


def dev_signing_key() -> str:
    """A key for `dev` only, kept (mode 600) under the platform home so links survive restarts."""
    path = dev_key_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()
