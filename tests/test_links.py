"""Signed links and storage keys as pure logic: what a signature accepts, which signing keys are
refused, and which names make keys (`serve` runs these checks on every request: tests/test_serve.py)."""

from __future__ import annotations

import secrets
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from export_platform.links import SIGNING_KEY_ENV, Kind, LinkError, Signer
from export_platform.resources.storage_keys import path_part, valid_key
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


NAMES = {
    "alice@example.com": "alice@example.com",
    "bob+exports@example.com": "bob+exports@example.com",
    "alice o'hara": "alice_o_hara",
    "Zoë": "Zoë",
    "Zoe\u0308": "Zoë",  # decomposed: stored composed (NFC)
    "李小龍": "李小龍",
    "../../etc": ".._.._etc",
    "..": "_",
    ".": "_",
    "": "_",
    "a/b\\c": "a_b_c",
    "nul\x00tab\tnewline\n": "nul_tab_newline_",
    "%2e%2e": "_2e_2e",
    "right\u202eto-left": "right_to-left",
    "é" * 80: "é" * 50,  # cut at 100 bytes, on a character
}


@pytest.mark.parametrize("name", NAMES)
def test_a_name_becomes_one_safe_segment(name):
    assert path_part(name) == NAMES[name]
    key = f"requests/{path_part(name)}/users-20261125T101010Z-1a2b3c4d.csv"
    assert valid_key(key) and key.count("/") == 2


@given(st.text(max_size=300))
def test_any_text_makes_a_segment_that_the_key_check_accepts(name):
    part = path_part(name)
    assert path_part(part) == part and 0 < len(part.encode()) <= 100
    assert valid_key(f"requests/{part}/x.csv") and valid_key(f"schedules/{part}/2026-12-01/x.csv")


@pytest.mark.parametrize("key", [
    "../x.csv", "requests/../x.csv", "requests/./x.csv", "/etc/passwd", "requests//x.csv", ".tmp/run/x.csv",
    "requests/a b/x.csv", "requests/a%40b/x.csv", "requests/a\\b/x.csv", "requests/a\x00/x.csv", "requests/Zoe\u0308/x.csv",
    "requests/" + "x" * 101 + "/x.csv", "requests/" + "y/" * 600 + "x.csv", "requests/\udcff/x.csv", "",
])
def test_keys_publish_cannot_make_are_refused(key):
    assert not valid_key(key)
