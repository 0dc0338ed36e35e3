"""`api-key`: the HTTP API's keys (create, list, revoke, token-secret) in a local command's database."""

from __future__ import annotations

import argparse
import sys

from .common import bad_option, local_database

def _api_key_store():
    from ...requests.store import RequestStore

    store = RequestStore(url=local_database())
    store.migrate()  # the key table, where this database has none yet
    return store


def _token_secret_line(key_id: str, name: str) -> str:
    from ...links import LinkError, Signer
    from ...delivery.tokens import token_secret

    try:
        return token_secret(Signer.from_env(), key_id)
    except LinkError as error:
        return f"(not shown: {error}; then run `export-platform api-key token-secret {name}`)"


def cmd_api_key_create(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from ...delivery.auth import check_user
    from ...requests import api_keys

    if (args.user is None) == (not args.trusted):
        raise bad_option("user", "give either --user USER (the key acts for that user) or --trusted (the key "
                             "names the user of each request)")
    user = check_user("user", args.user) if args.user is not None else None
    key, statement = api_keys.create(args.name, user, args.rate_per_minute)
    store = _api_key_store()
    try:
        store.run(statement)
    except sa.exc.IntegrityError:
        raise api_keys.ApiKeyError(f"a key named {args.name!r} exists already",
                                   hint="`export-platform api-key list` shows the keys") from None
    acts_for = f"acts for {user}" if user else "trusted to name the user of each request"
    print(f"created API key {args.name} (id {key.key_id}): {acts_for}, {args.rate_per_minute} requests a minute\n"
          f"API key, for the application's back-end (shown once: the database keeps only its hash):\n"
          f"  {key.token}\n"
          f"token secret, to sign user tokens for browsers (docs/delivery.md):\n"
          f"  {_token_secret_line(key.key_id, args.name)}")
    return 0


def cmd_api_key_list(args: argparse.Namespace) -> int:
    from ...requests import api_keys

    rows = _api_key_store().run(api_keys.listing()).all()
    if not rows:
        print("no API keys; create one with `export-platform api-key create NAME --user USER`")
        return 0
    print(f"{'name':<24} {'id':<12} {'acts for':<28} {'per min':>8}  {'created':<16}  revoked")
    for r in rows:
        revoked = f"{r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "-"
        print(f"{r.name[:24]:<24} {r.key_id:<12} {(r.requested_by or '(trusted: any user)')[:28]:<28} "
              f"{r.rate_per_minute:>8}  {r.created_at:%Y-%m-%d %H:%M}  {revoked}")
    return 0


def cmd_api_key_revoke(args: argparse.Namespace) -> int:
    from ...requests import api_keys

    revoked = _api_key_store().run(api_keys.revoke(args.name)).first()
    if revoked is None:
        print(f"no active API key named {args.name!r}; nothing revoked", file=sys.stderr)
        return 1
    print(f"revoked API key {revoked.name} (id {revoked.key_id}): it and its user tokens are refused from now on")
    return 0


def cmd_api_key_token_secret(args: argparse.Namespace) -> int:
    from ...requests import api_keys

    from ...links import Signer
    from ...delivery.tokens import token_secret

    row = _api_key_store().run(api_keys.by_name(args.name)).first()
    if row is None:
        raise api_keys.ApiKeyError(f"no API key named {args.name!r}")
    print(token_secret(Signer.from_env(), row.key_id))
    return 0

