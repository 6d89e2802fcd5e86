"""Webhooks end to end: a real ``regsearch serve`` and a real worker (whose dispatcher thread delivers), a receiver on
loopback that checks every signature and answers 500 to the first attempt of each new_best delivery; the CLI and
the API register, list and remove hooks; the outbox rows of the events workers do not cause in this module (a
study failing) are checked in-process."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support import LocalService, wait_until

pytestmark = pytest.mark.slow

SMALL = {"width": 0.25, "epochs": 1, "batch_size": 64, "data": {"train_size": 200}, "confirm": {"top_k": 0}}


class Receiver:
    """A webhook receiver on 127.0.0.1: records every request; by default 500 to the first attempt of each new_best
    delivery, 200 otherwise (``answer(payload, first)`` chooses the status)."""

    def __init__(self, answer=lambda payload, first: 500 if first and payload["event"] == "new_best" else 200) -> None:
        self.requests: list[dict] = []
        self.secrets: dict[int, str] = {}  # hook id -> its secret, as registration returned it
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                payload = json.loads(body)
                with receiver.lock:
                    secret = receiver.secrets.get(payload["hook"], "")
                    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
                    first = not any(request["id"] == payload["id"] for request in receiver.requests)
                    code = answer(payload, first)
                    receiver.requests.append({
                        "id": payload["id"], "body": body, "payload": payload, "code": code,
                        "signed": hmac.compare_digest(expected, self.headers.get("X-Regsearch-Signature", "")),
                        "delivery_header": self.headers.get("X-Regsearch-Delivery"), "event_header": self.headers.get("X-Regsearch-Event"),
                    })
                self.send_response(code)
                self.end_headers()

            def log_message(self, *_args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def delivered(self) -> list[dict]:
        with self.lock:
            return [request for request in self.requests if request["code"] == 200]


@pytest.fixture(scope="module")
def receiver():
    receiver = Receiver()
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = LocalService.at(tmp_path_factory.mktemp("service-webhooks"), REGSEARCH_WEBHOOK_ALLOWED_HOSTS="127.0.0.1,*.example.org",
                          REGSEARCH_WEBHOOK_SCHEMES="http", REGSEARCH_WEBHOOK_RETRY_S="0.3", REGSEARCH_WEBHOOK_TIMEOUT_S="5")
    svc.start_server()
    svc.start_workers(1)
    try:
        yield svc
    finally:
        svc.stop()


def test_signed_events_reach_a_receiver_at_least_once_with_retries_after_a_500(service, receiver):
    # An owner-wide hook through the CLI (auth off: the owner is admin, as every study's), the secret on stdout once.
    added = service.cli("webhooks", "add", receiver.url)
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip()
    (listed,) = json.loads(service.cli("webhooks", "list", "--json").stdout)
    assert listed["url"] == receiver.url and listed["study"] is None and "secret" not in listed
    assert sorted(listed["events"]) == ["completed", "failed", "new_best", "stopped"]
    receiver.secrets[listed["id"]] = secret
    everything = listed["id"]

    assert service.post("/v1/studies", json={"name": "hooked", "n_trials": 2, **SMALL}).status_code == 201
    assert service.post("/v1/studies", json={"name": "hooked-stop", "n_trials": 50, **SMALL}).status_code == 201
    # A hook of one study, for one event, through the API.
    created = service.post("/v1/webhooks", json={"url": receiver.url, "study": "hooked", "events": ["completed"]})
    assert created.status_code == 201, created.text
    only_completed = created.json()["id"]
    receiver.secrets[only_completed] = created.json()["secret"]
    assert service.post("/v1/studies/hooked-stop/stop").status_code == 200

    service.wait_status("hooked", ("completed",), timeout=240)
    def arrived() -> list[dict]:
        events = {(request["payload"]["hook"], request["payload"]["event"], request["payload"]["study"]) for request in receiver.delivered()}
        return events >= {(everything, "completed", "hooked"), (only_completed, "completed", "hooked"),
                          (everything, "stopped", "hooked-stop"), (everything, "new_best", "hooked")} and receiver.delivered()
    wait_until(arrived, timeout=60, what="completed, stopped and new_best at the receiver")

    requests = list(receiver.requests)
    assert all(request["signed"] for request in requests), "every request carries the HMAC of its body under its hook's secret"
    by_id: dict[str, list[dict]] = {}
    for request in requests:
        by_id.setdefault(request["id"], []).append(request)
        assert request["delivery_header"] == request["id"] and request["event_header"] == request["payload"]["event"]
    for attempts in by_id.values():
        assert len({attempt["body"] for attempt in attempts}) == 1, "every attempt of a delivery sends the same bytes"
        assert sum(attempt["code"] == 200 for attempt in attempts) == 1  # delivered once: no attempt after a 2xx
    # Each event once per hook (one delivery id each): one completed per hook, one stop, one new_best per new leader.
    keys = [(attempts[0]["payload"]["hook"], attempts[0]["payload"]["event"], attempts[0]["payload"]["study"],
             attempts[0]["payload"]["data"].get("trial_number")) for attempts in by_id.values()]
    assert len(keys) == len(set(keys)), keys
    assert not any(key[:2] == (only_completed, "new_best") for key in keys)  # that hook asked for completed only
    completed = next(attempts[0]["payload"] for attempts in by_id.values()
                     if attempts[0]["payload"]["event"] == "completed" and attempts[0]["payload"]["hook"] == everything)
    best = service.get("/v1/studies/hooked/best").json()
    assert completed["data"]["status"] == "completed" and completed["data"]["best"]["trial_number"] == best["trial_number"]
    new_best = [attempts for attempts in by_id.values() if attempts[0]["payload"]["event"] == "new_best"]
    assert new_best and all([attempt["code"] for attempt in attempts][:2] == [500, 200] for attempts in new_best)

    # The deliveries as the API records them: status, attempts (2 where the receiver answered 500 first), codes.
    deliveries = service.get(f"/v1/webhooks/{everything}/deliveries").json()["deliveries"]
    assert {delivery["id"] for delivery in deliveries} == {key for key, attempts in by_id.items()
                                                           if attempts[0]["payload"]["hook"] == everything}
    for delivery in deliveries:
        assert delivery["status"] == "delivered" and delivery["last_status_code"] == 200 and delivery["delivered_at"]
        assert delivery["attempts"] == len(by_id[delivery["id"]]) == (2 if delivery["event"] == "new_best" else 1)
    shown = service.cli("webhooks", "deliveries", str(everything))
    assert shown.returncode == 0 and "new_best" in shown.stdout and "delivered" in shown.stdout
    study = service.get("/v1/studies/hooked").json()
    assert study["webhooks"] == {"pending": 0, "delivered": len(new_best) + 2, "failed": 0}
    metrics = service.get("/metrics").text
    assert 'regsearch_webhook_deliveries{event="completed",status="delivered"} 2.0' in metrics
    assert f'regsearch_webhook_delivery_attempts{{event="new_best",status="delivered"}} {2.0 * len(new_best)}' in metrics

    removed = service.cli("webhooks", "remove", str(only_completed))
    assert removed.returncode == 0, removed.stderr
    assert [hook["id"] for hook in service.get("/v1/webhooks").json()["webhooks"]] == [everything]
    assert service.get(f"/v1/webhooks/{only_completed}/deliveries").status_code == 404


def test_hosts_and_schemes_outside_the_settings_are_refused_at_registration(service):
    for url, named in (("http://169.254.169.254/latest/meta-data", "host '169.254.169.254'"), ("http://localhost:8000/", "host 'localhost'"),
                       ("https://127.0.0.1/hook", "scheme 'https'"), ("http://example.org/x", "host 'example.org'"), ("not a url", "")):
        answer = service.post("/v1/webhooks", json={"url": url})
        assert answer.status_code == 422, (url, answer.text)
        (error,) = answer.json()["detail"]
        assert error["loc"] == ["body", "url"] and named in error["msg"], error
    assert service.post("/v1/webhooks", json={"url": "http://a.example.org/x", "events": ["nope"]}).status_code == 422
    assert service.post("/v1/webhooks", json={"url": "http://a.example.org/x", "study": "missing"}).status_code == 404
    cli = service.cli("webhooks", "add", "http://10.0.0.1/")
    assert cli.returncode == 1 and "host '10.0.0.1' is not allowed" in cli.stderr and len(cli.stderr.strip().splitlines()) == 1
    assert service.cli("webhooks", "remove", "99999").returncode == 1


def test_a_failing_study_writes_its_failed_event_in_the_same_transaction(database):
    """The failed event, which the module's workers never cause: record_failure's last straw writes the outbox row."""
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
    assert not coordination.record_failure(factory, study_id, "boom", max_failed_trials=2)
    assert coordination.record_failure(factory, study_id, "bang", max_failed_trials=2)
    assert not coordination.record_failure(factory, study_id, "again", max_failed_trials=2)  # once only
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
    receiver = Receiver(answer=lambda payload, first: 500)
    receiver.thread.start()
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
        receiver.server.shutdown()
        receiver.server.server_close()
