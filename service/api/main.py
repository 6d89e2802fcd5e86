"""The FastAPI application: the service's routes first, the Optuna dashboard mounted at ``/`` after them.

optuna-dashboard's WSGI app serves absolute paths (``/dashboard``, ``/api``, ``/static``), so it
cannot live under a prefix; mounted last, it only sees the requests none of our routes matched.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from service import metrics, studies
from service.api.routes import health
from service.api.routes import studies as studies_routes
from service.config import Settings, artifact_location, get_settings
from service.db import create_engine, migrate, optuna_storage, session_factory
from service.features import ImportanceCache, make_artifact_store

__all__ = ["create_app"]


def create_app(settings: Settings | None = None, *, dashboard: bool = True, apply_migrations: bool = True) -> FastAPI:
    """Build the app on ``settings.database_url``, applying migrations first (idempotent)."""
    settings = settings or get_settings()
    if apply_migrations:
        migrate(settings)
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        app.state.engine.dispose()
        app.state.optuna_storage.engine.dispose()

    app = FastAPI(
        lifespan=lifespan,
        title="regsearch",
        summary="Search the regularization (L1/L2 weight decay, dropout) of Keras CIFAR-10 convnets with Optuna.",
        version="0.1.0",
    )
    engine = create_engine(settings)
    app.state.settings = settings
    app.state.artifact_store = make_artifact_store(artifact_location(settings))  # the best trials' models
    app.state.importance_cache = ImportanceCache()
    app.state.engine = engine
    app.state.session_factory = session_factory(engine)
    app.state.optuna_storage = optuna_storage(settings)

    @app.exception_handler(studies.StudyNotFound)
    def _not_found(_request: Request, error: studies.StudyNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=status.HTTP_404_NOT_FOUND)

    app.include_router(health.router)
    app.include_router(studies_routes.router)
    metrics.instrument(app)  # /metrics, before the dashboard's catch-all mount

    if dashboard:
        import optuna_dashboard
        from a2wsgi import WSGIMiddleware

        app.mount("/", WSGIMiddleware(optuna_dashboard.wsgi(app.state.optuna_storage)), name="dashboard")
    return app
