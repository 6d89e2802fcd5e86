"""``GET /metrics``: the Prometheus exposition of the app's registry (see service/metrics.py).

A scrape needs a ``read`` token, like every other read (Prometheus sends it with
``authorization: {credentials_file: ...}``). ``REGSEARCH_METRICS_PUBLIC=true`` serves it without one:
only for a deployment where nothing but the scraper reaches the API's port (docs/kubernetes.md,
"Metrics"). A setting rather than a second port: one listener, one probe, one Service, and the
default stays closed.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import _bearer, require_read
from service.api.hardening import ERROR_RESPONSES

router = APIRouter(tags=["metrics"])


async def metrics_access(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]) -> None:
    """A read token, unless ``metrics_public`` opens /metrics to whoever reaches the port."""
    if not request.app.state.settings.metrics_public:
        await require_read(request, credentials)


@router.get("/metrics", summary="Prometheus metrics: HTTP traffic and the search's state", response_class=Response,
            dependencies=[Depends(metrics_access)], responses={code: ERROR_RESPONSES[code] for code in (401, 403)})
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
