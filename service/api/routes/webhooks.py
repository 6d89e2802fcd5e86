"""``/v1/webhooks``: register, list and remove an owner's webhooks; list a hook's deliveries (service/webhooks.py sends them).

Write scope registers and removes, read scope lists. A caller sees and removes its own hooks; an admin token
sees every hook. A hook for one study may be registered by that study's owner or an admin.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from fastapi.exceptions import RequestValidationError

from service import owners, studies, views, webhooks
from service.api.hardening import ErrorOut, ValidationErrorOut, owner_only
from service.api.deps import MethodAccess, SessionDep, SessionFactoryDep, SettingsDep
from service.api.read_cache import TokenInfo
from service.db import session_scope
from service.schemas import DeliveryList, WebhookCreate, WebhookCreated, WebhookList, WebhookPublic

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

#: the 404 of a hook that does not exist or is another owner's (the same answer: no hint that it exists)
_NOT_YOURS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "No such hook of yours."}}

HookId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The hook's id (from POST or GET /v1/webhooks).")]


def _visible_to(token: TokenInfo | None) -> str | None:
    """The owner whose hooks the caller sees (None: all of them, an admin)."""
    return None if owners.acts_for_all(token) else owners.caller_owner(token)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookCreated,
    summary="Register a webhook (its secret is in this answer only)",
    responses={
        **owner_only("register a webhook for"),
        404: {"model": ErrorOut, "description": "Unknown study."},
        422: {"model": ValidationErrorOut,
              "description": "Invalid field, or a URL whose scheme or host this server does not allow (the error names it)."},
    },
)
def create_webhook(hook: WebhookCreate, token: MethodAccess, settings: SettingsDep, factory: SessionFactoryDep) -> WebhookCreated:
    try:
        webhooks.check_destination(hook.url, settings)
    except webhooks.DestinationRefused as error:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body", "url"), "msg": str(error), "input": hook.url}]
        ) from None
    owner = owners.caller_owner(token)
    with session_scope(factory) as session:
        study_id = None
        if hook.study is not None:
            row = studies.get_study(session, hook.study)
            owners.check_owner(token, hook.study, row.owner, "register a webhook for")
            study_id = row.id
        created, secret = webhooks.create_hook(session, owner=owner, url=hook.url, events=hook.events, study_id=study_id)
        return views.webhook_out(session, created, secret)


@router.get("", response_model=WebhookList, summary="The caller's webhooks (every webhook for an admin token)")
def list_webhooks(token: MethodAccess, session: SessionDep) -> WebhookList:
    return WebhookList(webhooks=[views.webhook_out(session, hook) for hook in webhooks.list_hooks(session, owner=_visible_to(token))])


@router.get("/{hook_id}", response_model=WebhookPublic, summary="One webhook", responses=_NOT_YOURS)
def get_webhook(hook_id: HookId, token: MethodAccess, session: SessionDep) -> WebhookPublic:
    return views.webhook_out(session, _hook(session, hook_id, token))


@router.delete("/{hook_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove a webhook (its pending deliveries are dropped)",
               responses=_NOT_YOURS)
def delete_webhook(hook_id: HookId, token: MethodAccess, factory: SessionFactoryDep) -> Response:
    with session_scope(factory) as session:
        try:
            webhooks.delete_hook(session, hook_id=hook_id, owner=_visible_to(token))
        except webhooks.WebhookNotFound as error:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{hook_id}/deliveries",
    response_model=DeliveryList,
    summary="A webhook's latest deliveries: event, status, attempts, the receiver's last answer",
    responses=_NOT_YOURS,
)
def list_webhook_deliveries(
    hook_id: HookId, token: MethodAccess, session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many, newest first.")] = 100,
) -> DeliveryList:
    return views.deliveries_out(session, _hook(session, hook_id, token), limit)


def _hook(session, hook_id: int, token: TokenInfo | None):
    try:
        return webhooks.get_hook(session, hook_id=hook_id, owner=_visible_to(token))
    except webhooks.WebhookNotFound as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
