"""The Optuna dashboard, read-only and behind a read token: the dashboard shows, the service writes.

optuna-dashboard has write endpoints of its own (tell, delete, rename, create, notes, user attrs),
which would let anyone forge a best config or break the service's bookkeeping. :class:`ReadOnlyDashboard`
refuses every request but GET/HEAD with a 403 for everyone, admins included (change a study through
``/v1``), and with auth on asks for a token with at least read scope, either as a bearer header or as
the password of HTTP Basic auth (any user name): browsers prompt for it natively and ``curl -u :TOKEN``
works, with no cookie, session or login page to build and secure.

Mounted at ``/`` behind the API, it also answers the ``/v1/...`` requests no route matched with JSON
404/405 instead of the dashboard's HTML.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Any

import anyio.to_thread
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.hardening import excerpt, json_error
from service.config import Settings

__all__ = ["ReadOnlyDashboard", "dashboard_app", "standalone_dashboard", "token_from_headers"]

READ_ONLY_METHODS = frozenset({"GET", "HEAD"})
BASIC_CHALLENGE = 'Basic realm="regsearch dashboard (password: a regsearch token)", charset="UTF-8"'


def token_from_headers(scope: Scope) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` or ``Basic base64(ANY:TOKEN)`` header."""
    for key, value in scope.get("headers", ()):
        if key.lower() != b"authorization":
            continue
        kind, _, credentials = value.decode("latin-1").partition(" ")
        kind, credentials = kind.lower(), credentials.strip()
        if kind == "bearer":
            return credentials or None
        if kind == "basic":
            try:
                decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
            return decoded.partition(":")[2] or None
    return None


class ReadOnlyDashboard:
    """Wrap the dashboard's ASGI app: GET/HEAD only, a read token when ``auth`` is on.

    ``authenticate(token)`` returns a truthy value for a live token (every scope can read).
    ``api_routes``: the app's own routes, to answer unmatched ``/v1`` requests with JSON 404/405.
    """

    def __init__(self, app: ASGIApp, *, auth: bool, authenticate: Callable[[str | None], Any],
                 api_routes: Sequence[BaseRoute] = ()) -> None:
        self.app = app
        self.auth = auth
        self.authenticate = authenticate
        self.api_routes = api_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path == "/v1" or path.startswith("/v1/") or self._allowed(scope):
            await self._api_miss(scope, receive, send)
            return
        if scope["method"] not in READ_ONLY_METHODS:
            await json_error(
                403, "the dashboard is read-only: the service owns its studies (change them through /v1/studies)"
            )(scope, receive, send)
            return
        if self.auth:
            token = token_from_headers(scope)
            if token is None or not await anyio.to_thread.run_sync(self.authenticate, token):
                detail = "missing token" if token is None else "unknown or revoked token"
                await json_error(
                    401, f"{detail}: the dashboard needs a regsearch token, as the password of HTTP Basic auth "
                    "(any user name) or as 'Authorization: Bearer TOKEN'",
                    headers={"WWW-Authenticate": BASIC_CHALLENGE},
                )(scope, receive, send)
                return
        if not any(key.lower() == b"accept-encoding" for key, _ in scope.get("headers", ())):
            # optuna-dashboard's /static and /favicon.ico read this header unguarded (a KeyError, a 500 without it)
            scope = {**scope, "headers": [*scope.get("headers", ()), (b"accept-encoding", b"identity")]}
        await self.app(scope, receive, send)

    def _allowed(self, scope: Scope) -> set[str]:
        """The methods the API's own routes serve at this path (empty: not an API path); HEAD wherever GET is
        (service.api.hardening.ErrorGuard)."""
        allowed = {
            method for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
            for route in self.api_routes
            if not isinstance(route, Mount)
            and route.matches({**scope, "method": method, "root_path": ""})[0] is Match.FULL
        }
        return allowed | {"HEAD"} if "GET" in allowed else allowed

    async def _api_miss(self, scope: Scope, receive: Receive, send: Send) -> None:
        allowed = self._allowed(scope)
        if allowed:
            await json_error(405, f"method {scope['method']} not allowed here; allowed: {', '.join(sorted(allowed))}",
                             headers={"Allow": ", ".join(sorted(allowed))})(scope, receive, send)
        else:
            await json_error(404, f"no such endpoint: {excerpt(scope['path'])} (see /docs)")(scope, receive, send)


def dashboard_app(settings: Settings, storage: Any = None, *, session_factory: Any = None,
                  api_routes: Sequence[BaseRoute] = ()) -> ASGIApp:
    """optuna-dashboard on the service's storage, read-only and behind a read token.

    Used by ``create_app`` (mounted at ``/``) and by ``regsearch dashboard`` (alone, with its own
    ``/healthz`` for probes). Storage and sessions are built from ``settings`` when not given.
    """
    import optuna_dashboard
    from a2wsgi import WSGIMiddleware

    from service.db import create_engine, optuna_storage
    from service.db import session_factory as make_session_factory
    from service.tokens import authenticate

    from service.api.dashboard_view import ServiceView

    if storage is None:
        storage = optuna_storage(settings)
    if session_factory is None:
        session_factory = make_session_factory(create_engine(settings))
    return ReadOnlyDashboard(
        # the search without its confirmation repeats or the trash, each study's owner, the service's answer as its note
        WSGIMiddleware(optuna_dashboard.wsgi(ServiceView(storage, session_factory))),
        auth=settings.auth,
        authenticate=lambda token: authenticate(session_factory, token),
        api_routes=api_routes,
    )


def standalone_dashboard(settings: Settings, storage: Any = None) -> ASGIApp:
    """``regsearch dashboard``: the read-only dashboard, the input guard and an open ``/healthz``."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route

    from service.api.hardening import ErrorGuard, InputGuard

    async def healthz(_request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/healthz", healthz), Mount("/", dashboard_app(settings, storage))])
    return ErrorGuard(InputGuard(app, settings.max_body_bytes))
