"""Webhooks: an outbox of signed JSON events, delivered at least once by the workers, never by a request handler.

* **Registration** (:func:`create_hook`): an owner's URL, for one study or (without one) for every study of the
  owner, with the events it wants (:class:`~service.models.WebhookEvent`) and a secret shown once. Only the
  schemes and hosts of ``REGSEARCH_WEBHOOK_SCHEMES`` / ``REGSEARCH_WEBHOOK_ALLOWED_HOSTS`` are accepted
  (:func:`check_destination`), here and again before every attempt: no request to a host the operator did
  not allow, whatever a token holder registers (redirects are not followed either).
* **The outbox** (:func:`emit`): the change that causes an event (:mod:`service.coordination`: a study
  completed, failed or stopped, a new leader of its best-config history) writes one delivery row per
  matching hook in its own transaction, so an event is recorded if and only if the change is.
* **Delivery** (:class:`Dispatcher`, a thread of every worker process): due rows are claimed one attempt at
  a time with a conditional UPDATE (``attempts`` as it was read: of several dispatchers exactly one sends an
  attempt), POSTed with the stored body, ``X-Regsearch-Event``, ``X-Regsearch-Delivery`` (the row's id, also
  in the body) and ``X-Regsearch-Signature: sha256=HMAC-SHA256(secret, body)``. A 2xx answer marks it
  delivered; anything else waits ``webhook_retry_s``, doubling up to an hour, until ``webhook_max_attempts``.
  A dispatcher that dies mid-attempt leaves a lease that expires: the attempt is made again (at least once;
  a receiver drops repeats by the delivery id).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
import threading
import uuid
from collections.abc import Collection, Iterable
from typing import Any, Literal

import httpx
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings
from service.db import session_scope
from service.models import DeliveryStatus, SearchStudy, Webhook, WebhookDelivery, WebhookEvent, iso_utc, utc_now

__all__ = [
    "DestinationRefused", "Dispatcher", "WebhookNotFound", "check_destination", "create_hook", "deliver_due", "delete_hook",
    "delivery_counts", "emit", "forget_studies", "get_hook", "list_deliveries", "list_hooks", "retry_delay", "sign",
]

log = logging.getLogger(__name__)

#: The longest wait between two attempts of a delivery.
MAX_RETRY_S = 3600.0
#: Deliveries one dispatcher pass claims at most (the rest wait for the next pass).
BATCH = 20
USER_AGENT = "regsearch-webhooks/1"


class DestinationRefused(ValueError):
    """A URL whose scheme or host the settings do not allow (the message names it)."""


class WebhookNotFound(LookupError):
    def __init__(self, hook_id: int) -> None:
        super().__init__(f"no webhook {hook_id} (or not yours)")


def _listed(value: str) -> list[str]:
    return [item.strip().lower() for item in value.split(",") if item.strip()]


def check_destination(url: str, settings: Settings) -> None:
    """Raise :class:`DestinationRefused` unless ``url`` is absolute, of an allowed scheme and an allowed host."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as error:
        raise DestinationRefused(f"not a URL ({error})") from None
    schemes = _listed(settings.webhook_schemes)
    if parsed.scheme not in schemes:
        raise DestinationRefused(f"scheme {parsed.scheme or '(none)'!r} is not allowed (REGSEARCH_WEBHOOK_SCHEMES: {', '.join(schemes)})")
    host = parsed.host.lower().rstrip(".")
    if not host:
        raise DestinationRefused("the URL has no host")
    allowed = _listed(settings.webhook_allowed_hosts)
    if not any(host == entry or (entry.startswith("*.") and host.endswith(entry[1:])) for entry in allowed):
        raise DestinationRefused(
            f"host {host!r} is not allowed (REGSEARCH_WEBHOOK_ALLOWED_HOSTS: {', '.join(allowed) or 'empty, so none'})"
        )


def sign(secret: str, body: bytes) -> str:
    """The ``X-Regsearch-Signature`` header's value: ``sha256=`` and the hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def retry_delay(attempts: int, first_s: float) -> float:
    """Seconds before the attempt after ``attempts`` failed ones: ``first_s``, doubling, at most an hour."""
    return min(first_s * 2 ** (attempts - 1), MAX_RETRY_S)


# -- hooks -----------------------------------------------------------------------------------------


def create_hook(session: Session, *, owner: str, url: str, events: Iterable[str], study_id: int | None) -> tuple[Webhook, str]:
    """Register a hook; return it and its secret (stored for signing, shown to the caller only this once). ``events``
    as :class:`~service.schemas.WebhookCreate` validated them, each once."""
    secret = secrets.token_hex(32)
    hook = Webhook(owner=owner, url=url, events=list(events), study_id=study_id, secret=secret, created_at=utc_now())
    session.add(hook)
    session.flush()
    return hook, secret


def list_hooks(session: Session, *, owner: str | None) -> list[Webhook]:
    """The hooks of ``owner`` (every hook for None: an admin)."""
    query = sa.select(Webhook).order_by(Webhook.id)
    if owner is not None:
        query = query.where(Webhook.owner == owner)
    return list(session.scalars(query))


def get_hook(session: Session, *, hook_id: int, owner: str | None) -> Webhook:
    """The hook ``hook_id`` if ``owner`` may see it (None: an admin, any hook); :class:`WebhookNotFound` otherwise."""
    hook = session.get(Webhook, hook_id)
    if hook is None or (owner is not None and hook.owner != owner):
        raise WebhookNotFound(hook_id)
    return hook


def delete_hook(session: Session, *, hook_id: int, owner: str | None) -> None:
    """Remove a hook and its deliveries (the pending ones are not sent)."""
    hook = get_hook(session, hook_id=hook_id, owner=owner)
    session.execute(sa.delete(WebhookDelivery).where(WebhookDelivery.hook_id == hook.id))
    session.delete(hook)


def list_deliveries(session: Session, *, hook_id: int, limit: int = 100) -> list[WebhookDelivery]:
    """A hook's latest deliveries, newest first."""
    return list(session.scalars(
        sa.select(WebhookDelivery).where(WebhookDelivery.hook_id == hook_id)
        .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id).limit(limit)
    ))


def delivery_counts(session: Session, ids: Collection[int], *, of: Literal["study", "hook"]) -> dict[int, dict[str, int]]:
    """Deliveries by status, of each study (``of="study"``) or each hook in ``ids``: one query for all of them."""
    key = WebhookDelivery.study_id if of == "study" else WebhookDelivery.hook_id
    found: dict[int, dict[str, int]] = {}
    if ids:
        query = sa.select(key, WebhookDelivery.status, sa.func.count()).where(key.in_(ids)).group_by(key, WebhookDelivery.status)
        for owner_id, status, number in session.execute(query):
            found.setdefault(owner_id, {})[status] = number
    return {owner_id: {status.value: found.get(owner_id, {}).get(status.value, 0) for status in DeliveryStatus} for owner_id in ids}


def forget_studies(session: Session, study_ids: Any) -> None:
    """Delete the hooks and deliveries of the studies ``study_ids`` (a subquery) before they are purged."""
    session.execute(sa.delete(WebhookDelivery).where(WebhookDelivery.study_id.in_(study_ids)))
    session.execute(sa.delete(WebhookDelivery).where(
        WebhookDelivery.hook_id.in_(sa.select(Webhook.id).where(Webhook.study_id.in_(study_ids)))))
    session.execute(sa.delete(Webhook).where(Webhook.study_id.in_(study_ids)))


# -- the outbox ------------------------------------------------------------------------------------


def emit(session: Session, study_id: int, event: WebhookEvent, data: dict[str, Any]) -> int:
    """Record ``event`` of study ``study_id`` for every hook that wants it, in the caller's transaction (the one of
    the change it reports); return the number of deliveries written. Sending is the dispatcher's."""
    row = session.get(SearchStudy, study_id)
    if row is None:
        return 0
    hooks = session.scalars(sa.select(Webhook).where(sa.or_(
        Webhook.study_id == study_id, sa.and_(Webhook.study_id.is_(None), Webhook.owner == row.owner),
    )))
    now = utc_now()
    written = 0
    for hook in hooks:
        if event not in hook.events:
            continue
        delivery_id = str(uuid.uuid4())
        body = json.dumps({"id": delivery_id, "event": str(event), "hook": hook.id, "study": row.name,
                           "created_at": iso_utc(now), "data": data}, sort_keys=True, separators=(",", ":"))
        session.add(WebhookDelivery(id=delivery_id, hook_id=hook.id, study_id=study_id, event=str(event), body=body,
                                    status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=now, created_at=now))
        written += 1
    return written


# -- delivery --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Due:
    id: str
    attempts: int
    event: str
    body: str
    url: str
    secret: str


def _due(factory: sessionmaker[Session], limit: int) -> list[_Due]:
    with factory() as session:
        rows = session.execute(
            sa.select(WebhookDelivery.id, WebhookDelivery.attempts, WebhookDelivery.event, WebhookDelivery.body, Webhook.url,
                      Webhook.secret)
            .join(Webhook, Webhook.id == WebhookDelivery.hook_id)
            .where(WebhookDelivery.status == DeliveryStatus.PENDING.value, WebhookDelivery.next_attempt_at <= utc_now())
            .order_by(WebhookDelivery.next_attempt_at).limit(limit)
        ).all()
    return [_Due(*row) for row in rows]


def _claim(factory: sessionmaker[Session], due: _Due, lease_s: float) -> bool:
    """Take the delivery's next attempt: one conditional UPDATE (the attempt count as read), so of several
    dispatchers exactly one sends it; the lease (``next_attempt_at``) lets another retry it if this one dies."""
    now = utc_now()
    with session_scope(factory) as session:
        return session.execute(
            sa.update(WebhookDelivery)
            .where(WebhookDelivery.id == due.id, WebhookDelivery.status == DeliveryStatus.PENDING.value,
                   WebhookDelivery.attempts == due.attempts, WebhookDelivery.next_attempt_at <= now)
            .values(attempts=WebhookDelivery.attempts + 1, next_attempt_at=now + dt.timedelta(seconds=lease_s))
            .execution_options(synchronize_session=False)
        ).rowcount == 1


def _send(http: httpx.Client, due: _Due, settings: Settings) -> tuple[int | None, str | None, bool]:
    """One attempt: ``(status code, error, final)``; ``final`` for an answer no retry can change (a refused host)."""
    try:
        check_destination(due.url, settings)
    except DestinationRefused as error:
        return None, f"refused: {error}", True
    body = due.body.encode()
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "X-Regsearch-Event": due.event,
               "X-Regsearch-Delivery": due.id, "X-Regsearch-Signature": sign(due.secret, body)}
    try:
        response = http.post(due.url, content=body, headers=headers)
    except httpx.HTTPError as error:
        return None, f"{error.__class__.__name__}: {error}"[:500], False
    if 200 <= response.status_code < 300:
        return response.status_code, None, False
    return response.status_code, f"HTTP {response.status_code}: {response.text[:200]}", False


def _record(factory: sessionmaker[Session], due: _Due, code: int | None, error: str | None, final: bool, settings: Settings) -> None:
    attempts = due.attempts + 1
    now = utc_now()
    values: dict[str, Any] = {"last_status_code": code, "last_error": error}
    if error is None:
        values.update(status=DeliveryStatus.DELIVERED, delivered_at=now)
    elif final or attempts >= settings.webhook_max_attempts:
        values.update(status=DeliveryStatus.FAILED)
    else:
        values.update(next_attempt_at=now + dt.timedelta(seconds=retry_delay(attempts, settings.webhook_retry_s)))
    with session_scope(factory) as session:
        session.execute(sa.update(WebhookDelivery).where(WebhookDelivery.id == due.id, WebhookDelivery.attempts == attempts)
                        .values(**values).execution_options(synchronize_session=False))


def deliver_due(factory: sessionmaker[Session], settings: Settings, http: httpx.Client, limit: int = BATCH) -> int:
    """Make one attempt of every due delivery this dispatcher claims; return how many it attempted."""
    attempted = 0
    lease_s = 2 * settings.webhook_timeout_s + 5
    for due in _due(factory, limit):
        if not _claim(factory, due, lease_s):
            continue  # another dispatcher took this attempt
        code, error, final = _send(http, due, settings)
        _record(factory, due, code, error, final, settings)
        attempted += 1
        if error is not None:
            log.info("webhook delivery %s (%s) attempt %d: %s", due.id, due.event, due.attempts + 1, error)
    return attempted


class Dispatcher:
    """A worker process's delivery thread: every ``interval`` seconds, :func:`deliver_due` (errors logged, never fatal)."""

    def __init__(self, settings: Settings, interval: float) -> None:
        self.settings = settings
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="regsearch-webhooks", daemon=True)

    def start(self) -> None:
        if self._thread.ident is None and not self._stop.is_set():  # a thread starts once
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        from service.db import create_engine, session_factory

        engine = create_engine(self.settings)
        factory = session_factory(engine)
        try:
            with httpx.Client(timeout=self.settings.webhook_timeout_s, follow_redirects=False, trust_env=False) as http:
                while not self._stop.is_set():
                    try:
                        busy = deliver_due(factory, self.settings, http)
                    except Exception as error:  # noqa: BLE001 - a database hiccup: the next pass retries
                        log.warning("webhook dispatcher: %s", f"{error.__class__.__name__}: {error}"[:300])
                        busy = 0
                    if busy < BATCH:
                        self._stop.wait(self.interval)
        finally:
            engine.dispose()
