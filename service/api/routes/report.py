"""``GET /v1/studies/{name}/report``: the study's regularization report, one self-contained HTML page.

A read token, as a bearer header (the CLI) or as the password of HTTP Basic auth (a browser following
the dashboard's link: the same credentials as the dashboard, docs/security.md). The page inlines
plotly.js (about 4.8 MB), so it is sent gzip-compressed to clients that accept it.
"""

from __future__ import annotations

import gzip
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.security import HTTPAuthorizationCredentials

from service import report
from service.api.dashboard import BASIC_CHALLENGE, token_from_headers
from service.api.deps import ImportanceCacheDep, SessionDep, SessionFactoryDep, StorageDep, TokenInfo, require_read

router = APIRouter(prefix="/v1/studies", tags=["studies"])


async def read_access(request: Request) -> TokenInfo | None:
    """A read token from ``Authorization: Bearer`` or Basic (any user name, the token as password)."""
    token = token_from_headers(request.scope)
    credentials = None if token is None else HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)
    try:
        return await require_read(request, credentials)
    except HTTPException as error:
        if error.status_code == 401:
            error.headers = {**(error.headers or {}), "WWW-Authenticate": BASIC_CHALLENGE}
        raise


@router.get(
    "/{name}/report",
    summary="The study's regularization report: one self-contained HTML page (plots, how sure, the hand-off)",
    response_class=Response,
    responses={200: {"content": {"text/html": {}}, "description": "The page; it works offline (plotly.js inlined)."},
               404: {"description": "Unknown study."}},
)
def get_report(name: str, request: Request, session: SessionDep, factory: SessionFactoryDep, storage: StorageDep,
               cache: ImportanceCacheDep, _access: Annotated[TokenInfo | None, Depends(read_access)]) -> Response:
    data = report.gather(session, factory, storage, cache, name, base_url=str(request.base_url))
    page = report.render(data).encode("utf-8")
    headers = {"Cache-Control": "no-store", "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        page = gzip.compress(page, compresslevel=6)
        headers["Content-Encoding"] = "gzip"
    return Response(page, media_type="text/html; charset=utf-8", headers=headers)
