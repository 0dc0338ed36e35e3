"""Signed links and storage keys as pure logic: what a signature accepts, which signing keys are
refused, and which names make keys (`serve` runs these checks on every request: tests/test_serve.py)."""

from __future__ import annotations

import secrets
import time

import pytest

from export_platform.delivery.links import SIGNING_KEY_ENV, Kind, LinkError, Signer
from support.serve_stack import TEST_KEY

KEY = "requests/alice@example.com/users-20261125T101010Z-1a2b3c4d.csv"


@pytest.mark.parametrize(
    "weak",
    [" " * 32, "\t \n" * 12, "a" * 40, "0" * 64, "abab" * 10, "passwordpassword", "1234567890" * 2, "a" * 30 + "bcd"],
)
def test_a_signing_key_of_blanks_or_few_distinct_characters_is_refused(weak, monkeypatch):
    monkeypatch.setenv(SIGNING_KEY_ENV, weak)
    with pytest.raises(LinkError, match=SIGNING_KEY_ENV):
        Signer.from_env()


@pytest.mark.parametrize("good", [secrets.token_urlsafe(32), secrets.token_hex(16), secrets.token_hex(32), TEST_KEY])
def test_a_random_signing_key_is_accepted(good, monkeypatch):
    monkeypatch.setenv(SIGNING_KEY_ENV, good)
    assert Signer.from_env().key == good.encode()


def test_malformed_expiries_and_signatures_are_refused_not_raised():
    signer = Signer(TEST_KEY.encode())
    expires = int(time.time()) + 60
    sig = signer.signature(Kind.file, KEY, expires)
    assert signer.check(Kind.file, KEY, str(expires), sig) is None
    for bad_expires in ("²", "٣٣", "9" * 5_000, "1e9", "-1", "+99999999999", " 1", "", "0x10", "1_000_000_000_000"):
        assert signer.check(Kind.file, KEY, bad_expires, sig) == "this link is not signed", bad_expires
    for bad_sig in ("é" + sig[1:], sig + "\x00", "\udcff", "", sig[:-1], "A" * 10_000):
        assert signer.check(Kind.file, KEY, str(expires), bad_sig), bad_sig
