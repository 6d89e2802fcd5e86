"""The FastAPI application: the service's routes first, the Optuna dashboard mounted at ``/`` after them.

optuna-dashboard's WSGI app serves absolute paths (``/dashboard``, ``/api``, ``/static``), so it
cannot live under a prefix; mounted last, it only sees the requests none of our routes matched,
read-only and behind a read token (service/api/dashboard.py). Every ``/v1`` route needs a token:
read scope for GET, write scope for POST and DELETE (docs/security.md), and a change of a study its owner's
token or an admin's (:mod:`service.owners`); ``/healthz`` stays open.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from service import metrics, owners, studies
from service.api.deps import require_scope_by_method
from service.api.docs import STATIC_URL, add_redoc
from service.api.read_cache import ReadCache, TokenCache
from service.api.hardening import COMMON_RESPONSES, ERROR_RESPONSES, ErrorGuard, InputGuard, validation_error_handler
from service.api.limits import publish_limits
from service.api.routes import health
from service.api.routes import report as report_routes
from service.api.routes import studies as studies_routes
from service.api.routes import tokens as token_routes
from service.api.routes import webhooks as webhooks_routes
from service.config import Settings, artifact_location, get_settings
from service.db import create_engine, migrate, optuna_storage, session_factory
from service.features import ImportanceCache, make_artifact_store

__all__ = ["create_app"]

log = logging.getLogger("regsearch")


def announce_auth(settings: Settings, factory) -> None:
    """Secure by default: create the first admin token if there is none, and say how to use it."""
    from service.tokens import ensure_admin_token

    if not settings.auth:
        log.warning("AUTH IS OFF (REGSEARCH_AUTH=false / --no-auth): anyone who reaches this port can read, "
                    "submit, stop and delete studies; use it only on a trusted loopback setup")
        return
    if settings.admin_token is not None:
        from service.tokens import install_admin_token

        if install_admin_token(factory, settings.admin_token.get_secret_value()):
            log.warning("installed the admin token of REGSEARCH_ADMIN_TOKEN (only its hash is stored)")
        log.info("auth on: requests need a token (regsearch token list | create)")
        return
    from service.tokens import authenticate, database_label, read_token_file

    url = f"http://{settings.host}:{settings.port}"
    path = ensure_admin_token(factory, settings.token_file, url, database_label(settings.database_url))
    if path is not None:
        log.warning(
            "created the first admin token and kept it in %s under %s (readable by you only; other servers' "
            "tokens there are left alone). Use it with:\n"
            "    export REGSEARCH_TOKEN=$(regsearch token show --url %s)   # the regsearch CLI finds it by itself\n"
            "    curl -H \"Authorization: Bearer $REGSEARCH_TOKEN\" %s/v1/studies\n"
            "    dashboard: user name anything, password the token\n"
            "  more tokens: regsearch token create --scope read|write|admin [--name NAME] [--owner USER]", path, url, url, url,
        )
        return
    kept = read_token_file(settings.token_file, url)
    if kept and authenticate(factory, kept) is not None:
        log.info("auth on: the token file %s already holds a valid token for %s; left alone "
                 "(regsearch token show --url %s)", settings.token_file, url, url)
    else:
        log.info("auth on: this database already has tokens and the token file %s holds none of them for %s "
                 "(regsearch token create --scope admin, or REGSEARCH_TOKEN)", settings.token_file, url)


def create_app(settings: Settings | None = None, *, dashboard: bool = True, apply_migrations: bool = True) -> FastAPI:
    """Build the app on ``settings.database_url``, applying migrations first (idempotent) unless
    ``settings.migrate_on_start`` is off (a migration job ran them, and this process may lack DDL rights)."""
    settings = settings or get_settings()
    if apply_migrations and settings.migrate_on_start:
        migrate(settings)
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        app.state.engine.dispose()
        app.state.optuna_storage.engine.dispose()

    # /docs and /redoc with Swagger UI's and ReDoc's assets from the fastapi-offline package (under
    # /static-offline-docs), not a CDN: they work offline (service/api/docs.py). Like /openapi.json they need no
    # token: the schema holds no data, only the API's shape (README.md). No validator badge: it would call
    # validator.swagger.io.
    app = FastAPIOffline(
        lifespan=lifespan,
        redoc_url=None,
        static_url=STATIC_URL,
        swagger_ui_parameters={"validatorUrl": None},
        title="regsearch",
        summary="Search the regularization (L1/L2 weight decay, dropout) of Keras CIFAR-10 convnets with Optuna.",
        version="0.1.0",
        responses=COMMON_RESPONSES,
    )
    add_redoc(app)
    engine = create_engine(settings)
    app.state.settings = settings
    app.state.artifact_store = make_artifact_store(artifact_location(settings))  # the best trials' models
    app.state.importance_cache = ImportanceCache()
    app.state.engine = engine
    app.state.session_factory = session_factory(engine)
    app.state.optuna_storage = optuna_storage(settings)
    announce_auth(settings, app.state.session_factory)

    @app.exception_handler(studies.StudyNotFound)
    def _not_found(_request: Request, error: studies.StudyNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=status.HTTP_404_NOT_FOUND)

    @app.exception_handler(owners.NotOwner)
    def _not_owner(_request: Request, error: owners.NotOwner) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=status.HTTP_403_FORBIDDEN)

    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.state.token_cache = TokenCache(settings.auth_cache_s)
    app.add_middleware(ReadCache, ttl=settings.read_cache_s, tokens=app.state.token_cache, auth=settings.auth)
    app.add_middleware(InputGuard, max_body_bytes=settings.max_body_bytes)  # before anything reads
    app.add_middleware(ErrorGuard)  # outermost: HEAD as GET; an escaped error a 500 that closes its connection

    app.include_router(health.router)
    app.include_router(studies_routes.router, dependencies=[Depends(require_scope_by_method)], responses=ERROR_RESPONSES)
    app.include_router(report_routes.router, responses=ERROR_RESPONSES)  # its own read check: bearer or Basic (a browser)
    app.include_router(studies_routes.trash, dependencies=[Depends(require_scope_by_method)], responses=ERROR_RESPONSES)
    app.include_router(token_routes.router, dependencies=[Depends(require_scope_by_method)], responses=ERROR_RESPONSES)
    app.include_router(webhooks_routes.router, dependencies=[Depends(require_scope_by_method)], responses=ERROR_RESPONSES)
    metrics.instrument(app)  # /metrics, before the dashboard's catch-all mount
    publish_limits(app, settings)  # this server's n_trials and train_size maxima, in the schema too
    studies_routes.publish_links(app)  # what a client can follow once a POST created a study

    if dashboard:
        from service.api.dashboard import dashboard_app

        app.mount("/", dashboard_app(settings, app.state.optuna_storage, session_factory=app.state.session_factory,
                                     api_routes=app.router.routes), name="dashboard")
    return app
