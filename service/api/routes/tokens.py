"""``/v1/whoami``: the token a request carries, as the API sees it (what ``regsearch studies --mine`` asks)."""

from __future__ import annotations

from fastapi import APIRouter

from service import owners
from service.api.deps import MethodAccess
from service.schemas import CallerOut

router = APIRouter(prefix="/v1", tags=["tokens"])


@router.get("/whoami", response_model=CallerOut, summary="The caller's token: its name, scope and owner")
def whoami(token: MethodAccess) -> CallerOut:
    if token is None:  # auth off: everyone acts as the admin
        return CallerOut(token=None, scope="admin", owner=owners.caller_owner(None))
    return CallerOut(token=token.name, scope=token.scope, owner=owners.caller_owner(token))
