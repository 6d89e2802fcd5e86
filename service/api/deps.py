"""Request-scoped dependencies (``Annotated`` aliases used by the route modules)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings


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
