"""API tokens: random secrets stored only as SHA-256 hashes, with scopes ``read < write < admin``.

A token is ``rgs_`` + 32 random bytes (``secrets.token_urlsafe``). The database keeps its hash and a
short non-secret prefix for listing; the token itself is shown once, when it is created. A lookup
hashes the presented token, finds the row by hash and compares the hashes in constant time.

Every token has an owner, a user name (``regsearch token create --owner NAME``; default the token's
name): the studies it creates are that owner's, and a write token may change only its owner's studies
(:mod:`service.owners`). The bootstrap token's owner, and every token's from before owners, is
:data:`ADMIN_OWNER`.

Secure by default: :func:`ensure_admin_token` (called when the API starts with auth on) creates an
admin token when the table is empty and keeps it in ``settings.token_file`` under the server's URL (mode
0600, parent 0700; one entry per server, :mod:`trainer._service_token`), so that the first ``regsearch serve`` is never open to whoever reaches its port. Where the operator
holds the first token (a Kubernetes Secret: ``REGSEARCH_ADMIN_TOKEN``), :func:`install_admin_token`
stores its hash instead and nothing is written to disk.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from service.db import session_scope
from service.models import ADMIN_OWNER, SLUG_PATTERN, Base, as_utc, utc_now

__all__ = [
    "ADMIN_OWNER",
    "SCOPES",
    "ApiToken",
    "Scope",
    "TokenNotFound",
    "authenticate",
    "create_token",
    "ensure_admin_token",
    "has_scope",
    "install_admin_token",
    "valid_owner",
    "list_tokens",
    "database_label",
    "read_token_file",
    "revoke_token",
    "token_hash",
]

log = logging.getLogger(__name__)

Scope = Literal["read", "write", "admin"]
#: ordered: each scope allows everything the ones before it allow.
SCOPES: tuple[Scope, ...] = ("read", "write", "admin")
TOKEN_PREFIX = "rgs_"
PREFIX_LENGTH = 10  # "rgs_" + 6 characters: enough to tell tokens apart in a listing, useless to an attacker
BOOTSTRAP_NAME = ADMIN_OWNER  # the first admin token's name, and so its owner
OWNER_RULE = "an owner is a user name: 1-64 lowercase letters, digits, '-' or '_', starting and ending with a letter or digit"
#: last_used_at is refreshed at most this often (a write per request would serialize SQLite readers).
LAST_USED_RESOLUTION = dt.timedelta(seconds=60)


class ApiToken(Base):
    """One API token (``regsearch token create``); ``revoked_at`` set once it is revoked."""

    __tablename__ = "regsearch_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    scope: Mapped[str] = mapped_column(sa.String(8))
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    prefix: Mapped[str] = mapped_column(sa.String(16))
    #: the user this token acts for: its studies are this owner's (:mod:`service.owners`).
    owner: Mapped[str] = mapped_column(sa.String(64), default=ADMIN_OWNER, server_default=ADMIN_OWNER)
    created_at: Mapped[dt.datetime] = mapped_column(default=utc_now)
    last_used_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]


class TokenNotFound(LookupError):
    def __init__(self, key: str) -> None:
        super().__init__(f"no token with id or name {key!r}")


def has_scope(granted: str, needed: str) -> bool:
    """``read < write < admin``: does a token of scope ``granted`` allow ``needed``?"""
    return SCOPES.index(granted) >= SCOPES.index(needed)  # type: ignore[arg-type]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def valid_owner(owner: str) -> str:
    """``owner`` if it is a user name (a slug, as a study name); ValueError saying the rule otherwise."""
    if not SLUG_PATTERN.match(owner):
        raise ValueError(f"{OWNER_RULE}, got {owner!r}")
    return owner


def create_token(factory: sessionmaker[Session], scope: str, name: str | None = None,
                 owner: str | None = None) -> tuple[ApiToken, str]:
    """Create a token; return its row and the token (the only time the token itself is known).

    ``name`` defaults to ``SCOPE-xxxxxx``; ``owner`` to the token's name, which must then be a user name
    (ValueError otherwise: give the owner)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    name = name or f"{scope}-{secrets.token_hex(3)}"
    if owner is None and not SLUG_PATTERN.match(name):
        raise ValueError(f"the token's name {name!r} is not a user name, so it cannot be the token's owner: give the "
                         f"owner ({OWNER_RULE})")
    owner = valid_owner(owner if owner is not None else name)
    token = _new_token()
    with session_scope(factory) as session:
        row = ApiToken(name=name, scope=scope, token_hash=token_hash(token), owner=owner,
                       prefix=token[:PREFIX_LENGTH], created_at=utc_now())
        session.add(row)
        session.flush()
    return row, token


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(sa.select(ApiToken).order_by(ApiToken.id)))


def revoke_token(factory: sessionmaker[Session], key: str) -> ApiToken:
    """Revoke the token whose id or name is ``key`` (idempotent); raise :class:`TokenNotFound`."""
    condition = ApiToken.name == key
    if key.isdigit():
        condition = sa.or_(condition, ApiToken.id == int(key))
    with session_scope(factory) as session:
        row = session.scalar(sa.select(ApiToken).where(condition).order_by(ApiToken.id).limit(1))
        if row is None:
            raise TokenNotFound(key)
        if row.revoked_at is None:
            row.revoked_at = utc_now()
        session.flush()
        return row


def authenticate(factory: sessionmaker[Session], token: str | None) -> ApiToken | None:
    """The live (not revoked) token row matching ``token``, or None."""
    if not token or not token.isascii() or len(token) > 256:
        return None
    wanted = token_hash(token)
    with factory() as session:
        row = session.scalar(sa.select(ApiToken).where(ApiToken.token_hash == wanted))
        if row is None or not hmac.compare_digest(row.token_hash, wanted) or row.revoked_at is not None:
            return None
        now = utc_now()
        last_used = as_utc(row.last_used_at)
        if last_used is None or now - last_used > LAST_USED_RESOLUTION:
            try:
                session.execute(sa.update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
                session.commit()
            except sa.exc.OperationalError:  # a busy database must not refuse a valid token
                session.rollback()
        return row


def read_token_file(path: str | os.PathLike[str], url: str) -> str | None:
    """The token the token file keeps for the server at ``url`` (see :mod:`trainer._service_token`)."""
    from trainer._service_token import token_for

    return token_for(url, path)


def database_label(database_url: str) -> str:
    """The database as the token file records it: the URL without its password, a SQLite path made absolute."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        url = url.set(database=str(Path(url.database).resolve()))
    return url.render_as_string(hide_password=True)


def install_admin_token(factory: sessionmaker[Session], token: str) -> bool:
    """On an empty tokens table, store ``token`` (its hash) as the admin token; True when this call did.

    For ``REGSEARCH_ADMIN_TOKEN``: the operator keeps the token (a Secret), the database only its hash.
    Once any token exists this does nothing, so rotating means ``regsearch token create`` + ``revoke``.
    """
    with factory() as session:
        if session.scalar(sa.select(sa.func.count()).select_from(ApiToken)):
            return False
    try:
        with session_scope(factory) as session:
            session.add(ApiToken(name=BOOTSTRAP_NAME, scope="admin", owner=ADMIN_OWNER, token_hash=token_hash(token),
                                 prefix=token[:PREFIX_LENGTH], created_at=utc_now()))
    except sa.exc.IntegrityError:
        return False  # another process installed it at the same moment
    return True


def ensure_admin_token(factory: sessionmaker[Session], token_file: str, url: str = "http://127.0.0.1:8000",
                       database: str = "") -> Path | None:
    """On an empty tokens table, create the admin token and keep it in ``token_file`` under the server's ``url``.

    Return the file's path when this call created the token, else None. Several processes starting
    at once on one database are fine: the token's unique name decides which one creates it. The other
    servers' entries are left alone, and so is an entry for ``url`` that is still valid on this database.
    """
    from trainer._service_token import write_entry

    with factory() as session:
        if session.scalar(sa.select(sa.func.count()).select_from(ApiToken)):
            return None
    try:
        _row, token = create_token(factory, "admin", BOOTSTRAP_NAME)
    except sa.exc.IntegrityError:
        return None  # another process created it at the same moment (and writes the file)
    existing = read_token_file(token_file, url)
    if existing and authenticate(factory, existing) is not None:
        return None
    return write_entry(token_file, url, token, database)
