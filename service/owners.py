"""Who may change a study: the owner of the token that created it, or an admin. Every token may read.

Each token acts for an owner, a user name (:mod:`service.tokens`); a study records the owner of the token
that submitted it (with auth off, :data:`~service.models.ADMIN_OWNER`). A write token may stop, delete,
replace or restore only its owner's studies; an admin token may act on all. Every route that changes a
study calls :func:`require_owner` first: a refusal is :class:`NotOwner`, a 403 that names the owner.

``token`` is the API's ``TokenInfo`` (``scope`` and ``owner``), or None when auth is off.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service.models import ADMIN_OWNER, SearchStudy
from service.tokens import has_scope

__all__ = ["NotOwner", "acts_for_all", "caller_owner", "check_owner", "require_owner"]


class NotOwner(PermissionError):
    """The caller's token acts for another owner than the study's (a 403)."""

    def __init__(self, name: str, owner: str, action: str) -> None:
        super().__init__(f"study {name!r} belongs to {owner!r}; only {owner} or an admin may {action} it")
        self.name, self.owner, self.action = name, owner, action


def caller_owner(token: Any | None) -> str:
    """The owner the caller acts for: its token's; the admin's when auth is off (no token)."""
    return ADMIN_OWNER if token is None else getattr(token, "owner", ADMIN_OWNER)


def acts_for_all(token: Any | None) -> bool:
    """May the caller change every study? An admin token, or anyone when auth is off."""
    return token is None or has_scope(token.scope, "admin")


def check_owner(token: Any | None, name: str, owner: str, action: str) -> None:
    """Raise :class:`NotOwner` unless the caller may ``action`` the study ``name`` owned by ``owner``."""
    if owner != caller_owner(token) and not acts_for_all(token):
        raise NotOwner(name, owner, action)


def require_owner(factory: sessionmaker[Session], token: Any | None, name: str, action: str) -> None:
    """The check before every change of the study ``name`` (live or in the trash): :class:`NotOwner` unless the
    caller owns it or is an admin. An unknown name passes: the change itself then answers 404.

    A study's owner changes only when the study is purged and its name taken again, so checking before the
    change (in its own short read) is as good as checking in it.
    """
    if acts_for_all(token):
        return
    with factory() as session:
        owner = session.scalar(sa.select(SearchStudy.owner).where(SearchStudy.name == name))
    if owner is not None:
        check_owner(token, name, owner, action)
