"""``regsearch token create | list | revoke | show``: API tokens, managed directly on the database (``show``
reads the token file of this machine).

Like ``migrate``, these run where the database is reachable (REGSEARCH_DATABASE_URL); the token is
printed once, on creation, and only its hash is stored.
"""

from __future__ import annotations

import json
import sys

from service.cli import CommandError


def register(subparsers) -> None:
    token = subparsers.add_parser(
        "token", help="create, list and revoke API tokens (on the database)",
        description="API tokens (scopes read < write < admin). Runs against REGSEARCH_DATABASE_URL, like migrate.",
    )
    commands = token.add_subparsers(dest="token_command", metavar="ACTION")
    commands.required = True
    create = commands.add_parser("create", help="create a token and print it (shown only this once)")
    create.add_argument("--scope", choices=("read", "write", "admin"), default="read", help="default read")
    create.add_argument("--name", help="a unique name (default SCOPE-xxxxxx)")
    create.add_argument("--owner", help="the user the token acts for: its studies are this owner's, and a write token may "
                        "stop, delete, replace or restore only them (1-64 lowercase letters, digits, '-' or '_'; "
                        "default the token's name)")
    create.set_defaults(func=_create)
    listing = commands.add_parser("list", help="list the tokens (names, scopes, prefixes; never the tokens)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_list)
    revoke = commands.add_parser("revoke", help="revoke a token by id or name (takes effect at once)")
    revoke.add_argument("token", metavar="ID|NAME")
    revoke.set_defaults(func=_revoke)
    show = commands.add_parser(
        "show", help="print the token this machine keeps for a server (the one its first start created)",
        description="Print the token the token file (REGSEARCH_TOKEN_FILE) keeps for the server at --url: the admin "
        "token that server's first start created. Reads the file only, not the database.",
    )
    show.add_argument("--url", default=None, help="server URL (default REGSEARCH_URL or http://127.0.0.1:8000)")
    show.set_defaults(func=_show)


def _factory():
    import sqlalchemy as sa
    from pydantic import ValidationError

    from service.config import get_settings
    from service.db import create_engine, migrate, session_factory

    try:
        settings = get_settings()
    except ValidationError as error:
        raise CommandError(f"invalid settings: {error.errors()[0]['loc'][0]}: {error.errors()[0]['msg']}") from None
    try:
        migrate(settings)
    except sa.exc.OperationalError as error:
        detail = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise CommandError(f"database unavailable: {detail}") from None
    return session_factory(create_engine(settings))


def _row(row) -> dict:
    from service.models import iso_utc

    def when(value):
        return None if value is None else iso_utc(value)

    return {"id": row.id, "name": row.name, "scope": row.scope, "owner": row.owner, "prefix": row.prefix,
            "created_at": when(row.created_at),
            "last_used_at": when(row.last_used_at), "revoked_at": when(row.revoked_at)}


def _create(args) -> int:
    import sqlalchemy as sa

    from service.tokens import create_token

    try:
        row, token = create_token(_factory(), args.scope, args.name, args.owner)
    except ValueError as error:
        raise CommandError(f"{error} (--owner)") from None
    except sa.exc.IntegrityError:
        raise CommandError(f"a token named {args.name!r} already exists") from None
    print(token)
    print(f"token {row.name!r} (id {row.id}, scope {row.scope}, owner {row.owner}) created; it is shown only now. "
          "Use it as REGSEARCH_TOKEN or 'Authorization: Bearer TOKEN'.", file=sys.stderr)
    return 0


def _list(args) -> int:
    from service.tokens import list_tokens

    with _factory()() as session:
        rows = [_row(row) for row in list_tokens(session)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'ID':>4}  {'NAME':<24} {'SCOPE':<6} {'OWNER':<16} {'PREFIX':<11} {'CREATED':<20} {'LAST USED':<20} STATUS")
    for row in rows:
        status = "revoked" if row["revoked_at"] else "active"
        print(f"{row['id']:>4}  {row['name']:<24} {row['scope']:<6} {row['owner']:<16} {row['prefix']:<11} {row['created_at'][:19]:<20} "
              f"{(row['last_used_at'] or '-')[:19]:<20} {status}")
    return 0


def _revoke(args) -> int:
    from service.tokens import TokenNotFound, revoke_token

    try:
        row = revoke_token(_factory(), args.token)
    except TokenNotFound as error:
        raise CommandError(str(error)) from None
    print(f"token {row.name!r} (id {row.id}, scope {row.scope}) revoked")
    return 0


def _show(args) -> int:
    from service.config import get_settings
    from trainer._service_token import read_entries, server_key

    settings = get_settings()
    url = args.url or settings.url
    entries = read_entries(settings.token_file)
    if isinstance(entries, str):  # a file holding one bare token
        print(entries)
        return 0
    entry = (entries or {}).get(server_key(url))
    if entry is None:
        known = ", ".join(sorted(entries or {})) or "none"
        raise CommandError(f"the token file {settings.token_file} keeps no token for {server_key(url)} (servers in it: "
                           f"{known}); give --url, or create one: regsearch token create --scope admin")
    print(entry["token"])
    print(f"token of {server_key(url)} (database {entry.get('database') or '?'}, created {entry.get('created_at') or '?'})",
          file=sys.stderr)
    return 0
