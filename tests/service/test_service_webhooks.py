"""Webhooks in-process, where the module's subject is one step: the outbox row a change writes in its own
transaction, and the dispatcher's passes (back-off, attempts running out, a host no longer allowed). The whole path
over HTTP, a real server and real workers delivering to a receiver that checks signatures and answers 500 first, is
in test_service_e2e.py."""

from __future__ import annotations

import hashlib
import hmac
import json

from tests.support import WebhookReceiver


def test_a_failing_study_writes_its_failed_event_in_the_same_transaction(database):
    """The failed event, which the module's workers never cause: record_failure's last straw writes the outbox row,
    in the transaction of the UPDATE that fails the study (the engine's own begin and commit events tell)."""
    import sqlalchemy as sa

    from service import coordination, webhooks
    from service.models import SearchStudy, WebhookDelivery

    _settings, factory, _storage = database
    with factory.begin() as session:
        session.add(SearchStudy(name="doomed", spec={}, n_trials=3))
    with factory.begin() as session:
        study_id = session.scalar(sa.select(SearchStudy.id).where(SearchStudy.name == "doomed"))
        hook, secret = webhooks.create_hook(session, owner="admin", url="https://hooks.example.org/x", events=["failed"], study_id=None)
        webhooks.create_hook(session, owner="someone-else", url="https://hooks.example.org/y", events=["failed"], study_id=None)
        hook_id = hook.id
    engine, events = factory.kw["bind"], []
    listeners = {"begin": lambda _conn: events.append("begin"), "commit": lambda _conn: events.append("commit"),
                 "rollback": lambda _conn: events.append("rollback"),
                 "before_cursor_execute": lambda _conn, _cursor, sql, params, _ctx, _many: events.append((sql, repr(params)))}
    for name, listener in listeners.items():
        sa.event.listen(engine, name, listener)
    try:
        assert not coordination.record_failure(factory, study_id, "boom", max_failed_trials=2)
        assert coordination.record_failure(factory, study_id, "bang", max_failed_trials=2)
        assert not coordination.record_failure(factory, study_id, "again", max_failed_trials=2)  # once only
    finally:
        for name, listener in listeners.items():
            sa.event.remove(engine, name, listener)
    transactions, current = [], None
    for event in events:
        if event == "begin":
            current = []
        elif event in ("commit", "rollback"):
            transactions.append((event, current))
            current = None
        elif current is not None:
            current.append(event)
    (written,) = [(end, statements) for end, statements in transactions
                  if any(sql.startswith("INSERT INTO regsearch_webhook_deliveries") for sql, _ in statements)]
    assert written[0] == "commit"
    assert any(sql.startswith("UPDATE regsearch_studies SET status") and "'failed'" in params for sql, params in written[1]), written
    with factory() as session:
        (row,) = session.scalars(sa.select(WebhookDelivery)).all()  # the admin's hook only: another owner's stays quiet
    body = json.loads(row.body)
    assert (row.hook_id, row.event, row.status, row.attempts) == (hook_id, "failed", "pending", 0)
    assert body["id"] == row.id and body["study"] == "doomed" and body["data"]["error"] == "bang"
    assert webhooks.sign(secret, row.body.encode()) == "sha256=" + hmac.new(secret.encode(), row.body.encode(), hashlib.sha256).hexdigest()


def test_a_delivery_is_retried_with_back_off_then_failed_and_a_host_no_longer_allowed_is_not_called(database):
    """The dispatcher's pass in-process: a receiver that always answers 500 gets max_attempts attempts, spaced by the
    back-off, then the delivery is failed; a hook whose host left the allowed list fails at once, uncalled."""
    import time

    import httpx
    import sqlalchemy as sa

    from service import coordination, webhooks
    from service.models import SearchStudy, WebhookDelivery

    settings, factory, _storage = database
    receiver = WebhookReceiver(answer=lambda payload, first: 500).start()
    try:
        settings = settings.model_copy(update={"webhook_allowed_hosts": "127.0.0.1, gone.example.org", "webhook_schemes": "http",
                                               "webhook_max_attempts": 2, "webhook_retry_s": 0.4})
        with factory.begin() as session:
            session.add(SearchStudy(name="flaky", spec={}, n_trials=3))
        with factory.begin() as session:
            study_id = session.scalar(sa.select(SearchStudy.id).where(SearchStudy.name == "flaky"))
            hook, secret = webhooks.create_hook(session, owner="admin", url=receiver.url, events=["stopped"], study_id=study_id)
            receiver.secrets[hook.id] = secret
            webhooks.create_hook(session, owner="admin", url="http://gone.example.org/x", events=["stopped"], study_id=study_id)
            assert coordination.stop(session, study_id)
        settings = settings.model_copy(update={"webhook_allowed_hosts": "127.0.0.1"})  # gone.example.org removed
        with httpx.Client(timeout=5, trust_env=False) as http:
            assert webhooks.deliver_due(factory, settings, http) == 2  # both due: one 500, one refused
            assert webhooks.deliver_due(factory, settings, http) == 0  # the retry waits for its back-off
            time.sleep(0.5)
            assert webhooks.deliver_due(factory, settings, http) == 1
            time.sleep(0.5)
            assert webhooks.deliver_due(factory, settings, http) == 0  # out of attempts
        with factory() as session:
            rows = {row.hook_id == hook.id: row for row in session.scalars(sa.select(WebhookDelivery))}
        called, refused = rows[True], rows[False]
        assert (called.status, called.attempts, called.last_status_code) == ("failed", 2, 500)
        assert (refused.status, refused.attempts, refused.last_status_code) == ("failed", 1, None)
        assert "host 'gone.example.org' is not allowed" in refused.last_error
        assert [request["id"] for request in receiver.requests] == [called.id] * 2 and all(r["signed"] for r in receiver.requests)
    finally:
        receiver.close()


def test_deleting_an_active_study_tells_stopped_once_and_purging_it_drops_its_hooks(database):
    import sqlalchemy as sa

    from service import studies, webhooks
    from service.models import SearchStudy, Webhook, WebhookDelivery

    _settings, factory, storage = database
    with factory.begin() as session:
        session.add(SearchStudy(name="binned", spec={}, n_trials=3))
    with factory.begin() as session:
        study_id = session.scalar(sa.select(SearchStudy.id).where(SearchStudy.name == "binned"))
        webhooks.create_hook(session, owner="admin", url="https://hooks.example.org/x", events=["stopped"], study_id=study_id)
        webhooks.create_hook(session, owner="admin", url="https://hooks.example.org/all", events=["stopped"], study_id=None)
    studies.delete_study(factory, "binned")
    studies.restore_study(factory, "binned")  # comes back stopped: nothing more to tell
    studies.delete_study(factory, "binned")
    with factory() as session:
        assert sorted(session.scalars(sa.select(WebhookDelivery.event))) == ["stopped", "stopped"]  # once per hook
    studies.purge_study(factory, storage, "binned")
    with factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(WebhookDelivery)) == 0
        assert [hook.study_id for hook in session.scalars(sa.select(Webhook))] == [None]  # the owner-wide hook stays
