"""``GET /metrics``: the Prometheus exposition of the app's registry (see service/metrics.py).

Access (to be wired with the tokens of issue 9): a scrape needs a ``read`` token, like every other
read, unless a setting (planned: ``REGSEARCH_METRICS_PUBLIC=true``) exposes ``/metrics`` without one,
which is meant for deployments where only the scrape network reaches the API's metrics port (the
Kubernetes NetworkPolicy in deploy/kubernetes/ limits ingress to the API to the namespace and the
monitoring namespace). Until the tokens land, ``/metrics`` is as open as the rest of the API.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["metrics"])


@router.get("/metrics", summary="Prometheus metrics: HTTP traffic and the search's state", response_class=Response)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
