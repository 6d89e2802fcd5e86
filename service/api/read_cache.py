"""Cheap, steady reads: what production training jobs poll (``GET best``, ``GET study``) is served
from memory for ``read_cache_s`` seconds, and a token seen valid is trusted for ``auth_cache_s``.

:class:`ReadCache` is a pure ASGI middleware. A ``200`` answer to ``GET /v1/studies/NAME`` or
``GET /v1/studies/NAME/best`` is kept for ``read_cache_s`` (default 1 s) and replayed to any client
whose bearer token this process has validated within ``auth_cache_s`` (every other request takes the
full path, auth included). When an entry expires, one request refreshes it while the others get the
previous answer (for at most one more ``read_cache_s``), so the clients never stampede the database.
Reads of one study stay monotonic: a fresher answer of the study, or any uncached read of it (its
trials), retires the older cached answers of that study. Any other method on ``/v1/studies/NAME...`` through this process drops
that study's entries at once; changes made elsewhere (workers, other API processes, ``regsearch
token revoke``) show within those few seconds.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from typing import NamedTuple

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ReadCache", "TokenCache", "TokenInfo"]

_CACHED_PATH = re.compile(r"^/v1/studies/([^/]+)(?:/best)?$")
_STUDY_PATH = re.compile(r"^/v1/studies/([^/]+)")
MAX_ENTRY_BYTES = 256 * 1024
MAX_ENTRIES = 4096


class TokenInfo(NamedTuple):
    id: int
    name: str
    scope: str
    owner: str  # the user the token acts for (service.owners)


class TokenCache:
    """token hash -> (TokenInfo, expiry); only valid tokens are kept."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[TokenInfo, float]] = {}
        self._refreshing: set[str] = set()
        self._lock = threading.Lock()

    @staticmethod
    def key(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()

    def get(self, token: str, *, refresh: bool = False, grace: bool = False) -> TokenInfo | None:
        """The token's info if checked within ``ttl``; None if it must be checked (again).

        With ``refresh``, the first caller after expiry gets None (and checks it) while the others
        keep the previous answer for at most one more ``ttl``: no stampede of checks on expiry.
        ``grace`` accepts that previous answer without checking (the read cache's replays). So a
        revoked token stops working within ``2 * ttl``.
        """
        if self.ttl <= 0:
            return None
        key = self.key(token)
        entry = self._entries.get(key)
        if entry is None:
            return None
        now = time.monotonic()
        if entry[1] >= now or (grace and entry[1] + self.ttl >= now):
            return entry[0]
        if not refresh:
            return None
        with self._lock:
            if key not in self._refreshing:
                self._refreshing.add(key)
                return None
        return entry[0] if entry[1] + self.ttl >= now else None

    def put(self, token: str, info: TokenInfo | None) -> None:
        """Record a check's outcome (None: unknown or revoked, forgotten at once)."""
        if self.ttl <= 0:
            return
        key = self.key(token)
        with self._lock:
            self._refreshing.discard(key)
            if info is None:
                self._entries.pop(key, None)
                return
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = (info, time.monotonic() + self.ttl)


def _bearer(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == b"authorization":
            kind, _, credentials = value.decode("latin-1").partition(" ")
            return credentials.strip() if kind.lower() == "bearer" else None
    return None


class ReadCache:
    def __init__(self, app: ASGIApp, *, ttl: float, tokens: TokenCache, auth: bool) -> None:
        self.app = app
        self.ttl = ttl
        self.tokens = tokens
        self.auth = auth
        self._entries: dict[tuple[str, bytes], tuple[float, Message, bytes]] = {}
        self._invalidated: dict[str, float] = {}  # study name -> when a write last went through
        self._refreshing: set[tuple[str, bytes]] = set()

    def _invalidate(self, name: str) -> None:
        self._invalidated[name] = time.monotonic()
        if len(self._invalidated) > MAX_ENTRIES:
            self._invalidated = {name: self._invalidated[name]}
        prefix = f"/v1/studies/{name}"
        for key in [key for key in self._entries if key[0] == prefix or key[0] == prefix + "/best"]:
            self._entries.pop(key, None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.ttl <= 0:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if scope["method"] != "GET":
            study = _STUDY_PATH.match(path)
            if study and scope["method"] not in ("HEAD", "OPTIONS"):
                self._invalidate(study.group(1))
                try:
                    await self.app(scope, receive, send)
                finally:
                    self._invalidate(study.group(1))
                return
            await self.app(scope, receive, send)
            return
        if not _CACHED_PATH.match(path):
            study = _STUDY_PATH.match(path)
            if study:  # e.g. /trials, read fresh: no older cached answer of this study may follow it
                self._invalidate(study.group(1))
            await self.app(scope, receive, send)
            return
        key = (path, scope.get("query_string", b""))
        entry = self._entries.get(key)
        now = time.monotonic()
        # Fresh, or just expired while one request already refreshes it (no stampede on expiry).
        if entry is not None and (entry[0] > now or (key in self._refreshing and entry[0] + self.ttl > now)) \
                and self._trusted(scope):
            await send(entry[1])
            await send({"type": "http.response.body", "body": entry[2]})
            return
        self._refreshing.add(key)
        try:
            await self.app(scope, receive, self._recorder(key, _CACHED_PATH.match(path).group(1), send))
        finally:
            self._refreshing.discard(key)

    def _trusted(self, scope: Scope) -> bool:
        if not self.auth:
            return True
        token = _bearer(scope)
        return token is not None and self.tokens.get(token, grace=True) is not None  # every live token may read

    def _recorder(self, key: tuple[str, bytes], name: str, send: Send) -> Send:
        start: Message | None = None
        chunks: list[bytes] = []
        size = 0
        born = time.monotonic()

        async def record(message: Message) -> None:
            nonlocal start, size
            if message["type"] == "http.response.start":
                start = message if message["status"] == 200 else None
            elif message["type"] == "http.response.body" and start is not None:
                body = message.get("body", b"")
                size += len(body)
                chunks.append(body)
                if size > MAX_ENTRY_BYTES:
                    start = None
                elif not message.get("more_body", False) and born > self._invalidated.get(name, 0.0):
                    if len(self._entries) >= MAX_ENTRIES:
                        self._entries.clear()
                    # Reads stay monotonic per study: once a fresher answer exists, older ones of
                    # the same study (GET study vs GET best) are not served any more.
                    prefix = f"/v1/studies/{name}"
                    for other in [k for k, v in self._entries.items()
                                  if k != key and k[0] in (prefix, prefix + "/best") and v[0] - self.ttl < born]:
                        self._entries.pop(other, None)
                    self._entries[key] = (born + self.ttl, start, b"".join(chunks))
            await send(message)

        return record
