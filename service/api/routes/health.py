"""Liveness and database reachability."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Response, status

from service.api.deps import SessionDep
from service.schemas import Health

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=Health,
    summary="Is the API up and its database reachable?",
    responses={503: {"description": "The database is unreachable.", "model": Health}},
)
def healthz(session: SessionDep, response: Response) -> Health:
    try:
        session.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as error:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Health(status="unavailable", database=error.__class__.__name__)
    return Health(status="ok", database="ok")
