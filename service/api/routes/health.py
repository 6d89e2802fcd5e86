"""Liveness and database reachability."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import SessionDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Is the API up and its database reachable?")
def healthz(session: SessionDep) -> JSONResponse:
    try:
        session.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as error:
        return JSONResponse({"status": "unavailable", "database": str(error.__class__.__name__)}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})
