"""Request-scoped dependencies (``Annotated`` aliases used by the route modules)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.api.read_cache import TokenCache, TokenInfo
from service.tokens import authenticate, has_scope


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session_factory(request: Request) -> sessionmaker[Session]:
    return request.app.state.session_factory


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.session_factory() as session:
        yield session


def get_storage(request: Request) -> Any:
    """Optuna's RDBStorage on the service's database (no heartbeats: the API never runs trials)."""
    return request.app.state.optuna_storage


def get_artifact_store(request: Request) -> Any:
    """Optuna's artifact store holding the best trials' models (``REGSEARCH_ARTIFACT_URL``)."""
    return request.app.state.artifact_store


def get_importance_cache(request: Request) -> Any:
    """The process's :class:`service.features.ImportanceCache` (one computation per trial count)."""
    return request.app.state.importance_cache


ArtifactStoreDep = Annotated[Any, Depends(get_artifact_store)]
ImportanceCacheDep = Annotated[Any, Depends(get_importance_cache)]


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]
StorageDep = Annotated[Any, Depends(get_storage)]


# --- Access: bearer tokens with a scope (docs/security.md) ----------------------------------------

_bearer = HTTPBearer(auto_error=False, description="A regsearch token (`regsearch token create`).")
#: 401 answers carry this header (RFC 6750).
BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="regsearch"'}
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _require(needed: str) -> Callable[..., Any]:
    async def require_scope(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
    ) -> TokenInfo | None:
        settings: Settings = request.app.state.settings
        if not settings.auth:
            return None
        if credentials is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing token: send 'Authorization: Bearer TOKEN' (the CLI reads REGSEARCH_TOKEN or the token file)",
                headers=BEARER_CHALLENGE,
            )
        cache: TokenCache = request.app.state.token_cache
        token = cache.get(credentials.credentials, refresh=True)
        if token is None:
            try:
                row = await run_in_threadpool(authenticate, request.app.state.session_factory, credentials.credentials)
            except BaseException:
                cache.put(credentials.credentials, None)
                raise
            token = None if row is None else TokenInfo(row.id, row.name, row.scope, row.owner)
            cache.put(credentials.credentials, token)
            if token is None:
                raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown or revoked token", headers=BEARER_CHALLENGE)
        scope = needed
        if needed == "method":  # reads need read, everything else write
            scope = "read" if request.method in READ_METHODS else "write"
        if not has_scope(token.scope, scope):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"this token has scope {token.scope!r}; this request needs {scope!r}"
            )
        return token

    require_scope.__name__ = f"require_{needed}"
    return require_scope


require_read = _require("read")
require_write = _require("write")
require_admin = _require("admin")
#: read scope for GET/HEAD, write scope for every other method: one rule for a whole router.
require_scope_by_method = _require("method")

ReadAccess = Annotated[TokenInfo | None, Depends(require_read)]
WriteAccess = Annotated[TokenInfo | None, Depends(require_write)]
AdminAccess = Annotated[TokenInfo | None, Depends(require_admin)]
MethodAccess = Annotated[TokenInfo | None, Depends(require_scope_by_method)]
