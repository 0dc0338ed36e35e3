"""Storage keys: where a published file lies relative to the storage root, e.g.
`requests/alice@example.com/users-20261125T101010Z-1a2b3c4d.csv`.

A key is plain text, never percent-encoded: the request row stores it (`file_key`), a signed link
signs it, and the local folder or the S3 bucket takes it as it is. Its segments come from names
people type (a user, a schedule), so each is made safe once, here, and checked again wherever a
key arrives from outside (a URL, a row).
"""

from __future__ import annotations

import unicodedata

# Kept besides letters and digits of any script: what e-mail addresses and file names use.
_KEPT = frozenset("._@+-")
MAX_SEGMENT_BYTES = 100
# S3's limit for a whole object key (prefix included), in UTF-8 bytes.
MAX_KEY_BYTES = 1024


def _kept(char: str) -> bool:
    return char in _KEPT or unicodedata.category(char)[0] in "LN"


def path_part(value: str) -> str:
    """A user or schedule name as one key segment: letters and digits (NFC) and `._@+-` kept, any
    other character (separators, spaces, quotes, controls) an underscore, at most 100 bytes."""
    part = "".join(c if _kept(c) else "_" for c in unicodedata.normalize("NFC", value))
    part = part.encode()[:MAX_SEGMENT_BYTES].decode(errors="ignore")
    return "_" if part in ("", ".", "..") else part


def valid_key(key: str) -> bool:
    """A key as publish makes them: segments `path_part` leaves unchanged, no `.`/`..`, not in a
    hidden top folder (the temp folder `.tmp/`)."""
    segments = key.split("/")
    return (
        len(key.encode(errors="replace")) <= MAX_KEY_BYTES
        and all(s not in ("", ".", "..") and path_part(s) == s for s in segments)
        and not segments[0].startswith(".")
    )
