"""End to end over real HTTP: a real ``regsearch serve`` (uvicorn), two real ``regsearch worker``
processes training real Keras networks on the shipped CIFAR-10 subset, the real CLI client, the
dashboard rendered by headless Chromium, and webhooks delivered to a receiver on loopback.

One server and one pair of workers serve the whole module (on one SQLite file); the tests run in
order and each uses its own study.
"""

from __future__ import annotations

import csv
import io
import json
import re
import signal
import subprocess
import tempfile
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ROOT, LocalService, WebhookReceiver, free_port, kill_group, wait_until

pytestmark = pytest.mark.slow

SMALL = {"width": 0.25, "epochs": 1, "batch_size": 64, "data": {"train_size": 300}, "confirm": {"top_k": 0}}
ARTIFACTS = ROOT / "artifacts"


@pytest.fixture(scope="module")
def receiver():
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    # Webhooks to the loopback receiver only, over http, retried after 0.3 s (not 10 s).
    svc = LocalService.at(tmp_path_factory.mktemp("service-e2e"), REGSEARCH_WEBHOOK_ALLOWED_HOSTS="127.0.0.1,*.example.org",
                          REGSEARCH_WEBHOOK_SCHEMES="http", REGSEARCH_WEBHOOK_RETRY_S="0.3")
    svc.start_server()
    svc.start_workers(2)
    try:
        yield svc
    finally:
        svc.stop()


def test_study_runs_to_a_best_config_with_two_workers_and_the_cli(service, tmp_path):
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text("name: e2e-demo\nn_trials: 3\nwidth: 0.25\nepochs: 1\nbatch_size: 64\ndata:\n  train_size: 300\nconfirm:\n  top_k: 0\n")
    submitted = service.cli("submit", str(spec_file))
    assert submitted.returncode == 0, submitted.stderr
    assert "study e2e-demo submitted" in submitted.stdout

    watched = service.cli("watch", "e2e-demo", "--interval", "0.5")  # returns when the study ends
    assert watched.returncode == 0, watched.stderr + service.logs()
    assert "study e2e-demo completed: 3/3 trials" in watched.stdout

    study = service.get("/v1/studies/e2e-demo").json()
    assert study["status"] == "completed" and study["finished_at"] is not None
    assert study["counts"]["complete"] + study["counts"]["pruned"] == 3 and study["counts"]["running"] == 0

    trials = service.get("/v1/studies/e2e-demo/trials").json()["trials"]
    assert len(trials) == 3  # two workers, never more than n_trials
    for trial in trials:
        assert trial["state"] == "complete"
        assert 0.3 <= trial["params"]["dropout_conv"] <= 0.5 and 1e-6 <= trial["params"]["weight_decay"] <= 1e-2
        assert list(trial["intermediate_values"]) == ["0"] and len(trial["history"]) == 1
        assert trial["intermediate_values"]["0"] == pytest.approx(trial["value"])
        assert trial["train_accuracy"] is not None and trial["gap"] is not None and trial["images_per_second"] > 0
        assert trial["duration_s"] > 0 and trial["worker"]

    best = service.get("/v1/studies/e2e-demo/best").json()
    top = max(trials, key=lambda trial: trial["value"])
    assert best["value"] == pytest.approx(top["value"]) and best["metric"] == "val_accuracy"
    chosen = next(trial for trial in trials if trial["number"] == best["trial_number"])
    assert best["params"] == chosen["params"] and chosen["value"] == pytest.approx(top["value"])
    assert best["keras"]["l1"] == pytest.approx(best["params"]["weight_decay"] * best["params"]["l1_ratio"])
    assert best["keras"]["l2"] == pytest.approx(best["params"]["weight_decay"] * (1 - best["params"]["l1_ratio"]))
    assert best["train_size"] == 270 and best["epochs"] == 1 and best["width"] == 0.25  # 300 drawn, 10% held out
    assert best["best_since"] and best["direction"] == "maximize"
    assert study["best"]["value"] == pytest.approx(best["value"])

    # The CLI writes the same JSON, which the trainer reads back for production training.
    written = service.cli("best", "e2e-demo", "-o", str(tmp_path / "best.json"))
    assert written.returncode == 0, written.stderr
    from trainer import BestConfig

    loaded = BestConfig.from_dict(json.loads((tmp_path / "best.json").read_text()))
    assert loaded.regularization.to_dict() == best["params"] and loaded.study == "e2e-demo"
    listing = service.cli("studies")
    assert "e2e-demo" in listing.stdout and "completed" in listing.stdout


def test_study_with_confirmation_answers_with_mean_interval_ties_and_ranges(service):
    """A real study with its confirmation stage over HTTP: the top configs re-trained (real networks, another
    validation split per repeat), the best with its mean, interval, ties and robust ranges."""
    spec = {"name": "e2e-confirm", "n_trials": 3, **SMALL, "pruner": "none", "confirm": {"top_k": 2, "repeats": 1}}
    assert service.post("/v1/studies", json=spec).status_code == 201
    study = service.wait_status("e2e-confirm", ("completed", "failed", "stopped"), timeout=300)
    assert study["status"] == "completed", service.logs()
    trials = service.get("/v1/studies/e2e-confirm/trials").json()["trials"]
    search = [trial for trial in trials if trial["stage"] in ("search", "reference")]  # the reference is one
    repeats = [trial for trial in trials if trial["stage"] == "confirm"]
    (reference,) = [trial for trial in search if trial["stage"] == "reference"]
    top2 = sorted(search, key=lambda trial: (-trial["value"], trial["number"]))[:2]
    confirmed = {trial["number"]: trial for trial in [*top2, reference]}  # the reference is confirmed too
    assert (study["trials_finished"], study["confirm_trials"], study["confirm_finished"]) == (3, len(confirmed), len(confirmed))
    assert len(search) == 3 and len(repeats) == len(confirmed) and all(trial["state"] == "complete" for trial in trials)
    assert sorted(trial["confirms"] for trial in repeats) == sorted(confirmed)
    assert all(trial["repeat"] == 1 and len(trial["intermediate_values"]) == 1 for trial in repeats)

    best = service.get("/v1/studies/e2e-confirm/best").json()
    runs = {n: [t["value"]] + [r["value"] for r in repeats if r["confirms"] == n] for n, t in confirmed.items()}
    means = {number: sum(values) / 2 for number, values in runs.items()}
    assert means[best["trial_number"]] == pytest.approx(max(means.values()))  # the highest mean
    # The margin over the reference: the best's two runs against the reference's two runs (an interval).
    margin = best["margin"]
    assert (margin["n_best"], margin["n_reference"]) == (2, 2)
    assert margin["value"] == pytest.approx(means[best["trial_number"]] - means[reference["number"]])
    assert margin["low"] is not None and margin["low"] <= margin["value"] <= margin["high"]
    assert best["confirmed"] is True and best["n"] == 2 and best["mean"] == pytest.approx(means[best["trial_number"]])
    assert best["ci_low"] <= best["mean"] <= best["ci_high"] and best["value"] == pytest.approx(best["mean"])
    assert best["first_value"] == pytest.approx(runs[best["trial_number"]][0])
    assert set(best["robust_ranges"]) == set(best["params"]) and "paired t-test" in best["test"]
    assert study["best"]["confirmed"] is True and study["best"]["n"] == 2
    # The model served was trained with the best config: every confirmed candidate kept its model.
    model = service.get("/v1/studies/e2e-confirm/best/model")
    assert model.status_code == 200 and model.headers["x-regsearch-trial"] == str(best["trial_number"])
    assert study["model"]["trial_number"] == best["trial_number"]
    shown = service.cli("best", "e2e-confirm")
    assert shown.returncode == 0 and f"mean {best['mean']:.4f} over 2 run(s)" in shown.stdout and "confirmed" in shown.stdout


def test_budgets_stopping_rules_and_edits_end_and_resume_searches_losing_nothing(service):
    """Issue 20 on real networks, five tiny studies served side by side: a time budget and a trial-hours budget end
    their searches early (running trials recorded as pruned with their epochs, then confirmation, whose own cost is
    reported), each stopping rule ends its search, PATCH (and the CLI) raises a completed study's n_trials, which
    searches further and confirms again, and a fixed field is refused."""
    tiny = {**SMALL, "pruner": "none", "reference": False}
    flags = ["--width", "0.25", "--batch-size", "64", "--train-size", "300", "--no-reference", "--pruner", "none"]
    # Trials far longer than the time budget: it runs out while one trains (which ends at its epoch, pruned).
    submitted = service.cli("submit", "--name", "e2e-runtime", "--n-trials", "40", "--epochs", "200", "--top-k", "0",
                            "--max-runtime-s", "3", *flags)
    assert submitted.returncode == 0, submitted.stderr
    specs = [
        {"name": "e2e-hours", "n_trials": 40, "max_trial_hours": 0.002, **tiny, "confirm": {"top_k": 1, "repeats": 1}},
        {"name": "e2e-target", "n_trials": 40, "stop_when": {"target": 0.0}, **tiny},
        {"name": "e2e-patience", "n_trials": 40, "stop_when": {"no_improvement_trials": 1}, **tiny},
        {"name": "e2e-patch", "n_trials": 2, **tiny, "confirm": {"top_k": 1, "repeats": 1}},
    ]
    for spec in specs:
        assert service.post("/v1/studies", json=spec).status_code == 201
    final = ("completed", "failed", "stopped")

    runtime = service.wait_status("e2e-runtime", final, timeout=300)
    assert (runtime["status"], runtime["search_ended_by"]) == ("completed", "max_runtime_s"), service.logs()
    trials = service.get("/v1/studies/e2e-runtime/trials").json()["trials"]
    assert runtime["spec"]["max_runtime_s"] == 3 and runtime["usage"]["runtime_s"] >= 3
    # Nothing lost: every trial started is recorded, complete or pruned (a running one at its current epoch).
    assert len(trials) == runtime["n_trials"] == runtime["trials_finished"] < 40
    assert all(trial["state"] in ("complete", "pruned") for trial in trials)
    assert any(trial["state"] == "pruned" and 1 <= len(trial["intermediate_values"]) < 200 for trial in trials), trials

    hours = service.wait_status("e2e-hours", final, timeout=300)
    assert (hours["status"], hours["search_ended_by"]) == ("completed", "max_trial_hours"), service.logs()
    assert hours["usage"]["trial_hours"] >= 0.002 and hours["trials_finished"] == hours["n_trials"] < 40
    assert hours["confirm_trials"] == hours["confirm_finished"] == 1 and hours["usage"]["confirm_trial_hours"] > 0

    for name, rule in (("e2e-target", "target"), ("e2e-patience", "no_improvement_trials")):
        study = service.wait_status(name, final, timeout=300)
        assert (study["status"], study["search_ended_by"]) == ("completed", rule), service.logs()
        assert study["trials_finished"] == study["n_trials"] < 40 and study["counts"]["failed"] == 0

    first = service.wait_status("e2e-patch", final, timeout=300)
    assert (first["status"], first["search_ended_by"], first["confirm_trials"]) == ("completed", "n_trials", 1)
    refused = httpx.patch(f"{service.url}/v1/studies/e2e-patch", json={"n_trials": 3, "epochs": 2}, timeout=60)
    assert refused.status_code == 422 and "field 'epochs' cannot be changed" in refused.text
    assert "mutable: n_trials, max_runtime_s, max_trial_hours" in refused.text
    edited = service.cli("studies", "edit", "e2e-patch", "--n-trials", "3")
    assert edited.returncode == 0 and "study e2e-patch running: n_trials 3" in edited.stdout, edited.stderr
    again = service.wait_status("e2e-patch", final, timeout=300)
    assert (again["status"], again["search_ended_by"], again["trials_finished"]) == ("completed", "n_trials", 3)
    trials = service.get("/v1/studies/e2e-patch/trials").json()["trials"]
    search = sorted((t for t in trials if t["stage"] == "search"), key=lambda t: (-t["value"], t["number"]))
    repeats = [trial for trial in trials if trial["stage"] == "confirm"]
    assert len(search) == 3 and all(trial["state"] == "complete" for trial in trials)
    # Confirmed again over the whole search: the top config of the three has its repeat (the first one's is kept).
    assert search[0]["number"] in {trial["confirms"] for trial in repeats}
    assert again["confirm_trials"] == again["confirm_finished"] == len(repeats) and again["best"]["n"] == 2

    exposition = service.get("/metrics").text
    assert 'regsearch_study_search_ended{reason="max_runtime_s",study="e2e-runtime"} 1.0' in exposition
    assert 'regsearch_study_trial_hours{stage="confirm",study="e2e-hours"}' in exposition
    assert 'regsearch_study_budget_used_ratio{budget="max_trial_hours",study="e2e-hours"}' in exposition


def test_cli_errors_are_one_line(service):
    unknown = service.cli("best", "ghost")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "regsearch best: study 'ghost' not found"
    invalid = service.cli("submit", "--name", "Bad Name")
    assert invalid.returncode == 1 and "name: Value error, name must be a slug" in invalid.stderr
    unreachable = service.cli("studies", "--url", f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 1 and "cannot reach the regsearch server" in unreachable.stderr
    assert "Traceback" not in unknown.stderr + invalid.stderr + unreachable.stderr


def test_server_restart_mid_study_loses_nothing(service):
    assert service.post("/v1/studies", json={"name": "e2e-restart", "n_trials": 4, **SMALL}).status_code == 201
    wait_until(lambda: service.get("/v1/studies/e2e-restart").json()["trials_finished"] >= 1, timeout=180, interval=0.5,
               what="a first finished trial")
    before = {trial["number"]: trial for trial in service.get("/v1/studies/e2e-restart/trials").json()["trials"]
              if trial["state"] == "complete"}

    kill_group(service.server, signal.SIGTERM)
    service.start_server()

    study = service.wait_status("e2e-restart", ("completed",))
    assert study["trials_finished"] == 4 and study["counts"]["running"] == 0
    after = {trial["number"]: trial for trial in service.get("/v1/studies/e2e-restart/trials").json()["trials"]}
    assert len(after) == 4
    for number, trial in before.items():  # what was there before the restart is intact
        assert after[number]["params"] == trial["params"] and after[number]["value"] == trial["value"]
    assert service.get("/v1/studies/e2e-restart/best").status_code == 200


def test_stop_ends_running_trials_within_an_epoch_and_starts_no_more(service):
    spec = {"name": "e2e-stop", "n_trials": 40, **SMALL, "epochs": 30, "pruner": "none"}
    assert service.post("/v1/studies", json=spec).status_code == 201

    def a_trial_has_reported():
        trials = service.get("/v1/studies/e2e-stop/trials").json()["trials"]
        return any(trial["intermediate_values"] for trial in trials)

    wait_until(a_trial_has_reported, timeout=180, interval=0.5, what="a trial's first epoch")
    stopped = service.post("/v1/studies/e2e-stop/stop")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"

    wait_until(lambda: service.get("/v1/studies/e2e-stop").json()["counts"]["running"] == 0, timeout=60, interval=0.5,
               what="running trials to stop")
    trials = service.get("/v1/studies/e2e-stop/trials").json()["trials"]
    assert trials and all(trial["state"] == "failed" and trial["fail_reason"] == "stopped" for trial in trials)
    assert all(len(trial["intermediate_values"]) < 30 for trial in trials)
    time.sleep(2)  # four poll intervals: nothing new starts
    assert len(service.get("/v1/studies/e2e-stop/trials").json()["trials"]) == len(trials)
    study = service.get("/v1/studies/e2e-stop").json()
    assert study["status"] == "stopped"
    assert (study["counts"]["stopped"], study["counts"]["failed"]) == (len(trials), 0)  # a stop is not a failure
    worker_logs = "".join(log.read_text() for log in service.root.glob("worker*.log"))
    assert "Traceback" not in worker_logs and "StudyStopped" in worker_logs  # one line per stopped trial


def _chromium(chromium: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--window-size=1400,1000", *args],
            capture_output=True, text=True, timeout=120,
        )


def test_dashboard_shows_the_study(service, chromium):
    study = service.get("/v1/studies/e2e-demo").json()
    url = f"{service.url}{study['links']['dashboard']}"
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "service-dashboard.png"
    screenshot.unlink(missing_ok=True)
    rendered = _chromium(chromium, f"--screenshot={screenshot}", "--dump-dom", url)
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    assert "e2e-demo" in rendered.stdout, rendered.stdout[-2000:]  # the rendered DOM, not the HTML shell
    assert "e2e-demo" not in service.get("/dashboard").text
    assert screenshot.stat().st_size > 10_000, rendered.stderr[-2000:]


TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def _timestamps(value, key=""):
    """Every (key, value) of a JSON document whose key names a time."""
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _timestamps(item, name)
    elif isinstance(value, list):
        for item in value:
            yield from _timestamps(item, key)
    elif value not in (None, "") and (key.endswith("_at") or key.startswith("datetime_") or key == "best_since"):
        yield key, value


def test_every_timestamp_the_api_returns_has_one_format(service):
    if not any(study["best"] for study in service.get("/v1/studies").json()["studies"]):  # run alone
        assert service.post("/v1/studies", json={"name": "e2e-times", "n_trials": 1, **SMALL}).status_code == 201
        service.wait_status("e2e-times", ("completed",))
    listing = service.get("/v1/studies").json()
    named = [study for study in listing["studies"] if study["best"]]
    trials = f"/v1/studies/{named[0]['name']}/trials"
    documents = [listing, service.get(trials).json(), service.get(f"/v1/studies/{named[0]['name']}/best").json(),
                 service.get(trials, params={"format": "json"}).json(),  # the export too, in both forms
                 list(csv.DictReader(io.StringIO(service.get(trials, params={"format": "csv"}).text)))]
    found = [pair for document in documents for pair in _timestamps(document)]
    assert {key for key, _ in found} >= {"created_at", "started_at", "best_since", "datetime_start", "datetime_complete"}
    assert [pair for pair in found if not TIMESTAMP.match(pair[1])] == []


def test_signed_webhooks_reach_a_receiver_at_least_once_with_retries_after_a_500(service, receiver):
    """Both workers' dispatchers deliver to a receiver on loopback that checks every signature and answers 500 to the
    first attempt of each new_best delivery (tests/support.py): each event arrives under one delivery id, every attempt
    the same bytes, the 500s retried; the API lists the deliveries with their attempts. Other studies of this module
    may still send events to the owner-wide hook: only this test's two are looked at."""
    # An owner-wide hook through the CLI (auth off: the owner is admin, as every study's), the secret on stdout once.
    added = service.cli("webhooks", "add", receiver.url)
    assert added.returncode == 0, added.stderr
    secret = added.stdout.strip()
    (listed,) = service.get("/v1/webhooks").json()["webhooks"]
    assert listed["url"] == receiver.url and listed["study"] is None and "secret" not in listed
    assert sorted(listed["events"]) == ["completed", "failed", "new_best", "stopped"]
    receiver.secrets[listed["id"]] = secret
    everything = listed["id"]

    assert service.post("/v1/studies", json={"name": "e2e-hooked", "n_trials": 2, **SMALL}).status_code == 201
    assert service.post("/v1/studies", json={"name": "e2e-hooked-stop", "n_trials": 50, **SMALL}).status_code == 201
    # A hook of one study, for one event, through the API.
    created = service.post("/v1/webhooks", json={"url": receiver.url, "study": "e2e-hooked", "events": ["completed"]})
    assert created.status_code == 201, created.text
    only_completed = created.json()["id"]
    receiver.secrets[only_completed] = created.json()["secret"]
    assert service.post("/v1/studies/e2e-hooked-stop/stop").status_code == 200

    service.wait_status("e2e-hooked", ("completed",), timeout=240)
    def arrived() -> list[dict]:
        events = {(request["payload"]["hook"], request["payload"]["event"], request["payload"]["study"]) for request in receiver.delivered()}
        return events >= {(everything, "completed", "e2e-hooked"), (only_completed, "completed", "e2e-hooked"),
                          (everything, "stopped", "e2e-hooked-stop"), (everything, "new_best", "e2e-hooked")} and receiver.delivered()
    wait_until(arrived, timeout=60, what="completed, stopped and new_best at the receiver")
    # A trial of the stopped study may still complete (and lead): wait for it, then for every delivery to settle.
    wait_until(lambda: service.get("/v1/studies/e2e-hooked-stop").json()["counts"]["running"] == 0, timeout=120, what="the stop")
    ours = ("e2e-hooked", "e2e-hooked-stop")
    wait_until(lambda: all(delivery["status"] == "delivered" for hook in (everything, only_completed)
                           for delivery in service.get(f"/v1/webhooks/{hook}/deliveries").json()["deliveries"]
                           if delivery["study"] in ours), timeout=60, what="every delivery delivered")

    requests = [request for request in receiver.requests if request["payload"]["study"] in ours]
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
    assert completed["data"]["status"] == "completed" and completed["data"]["finished_at"].endswith("Z")
    new_best = [attempts for attempts in by_id.values() if attempts[0]["payload"]["event"] == "new_best"]
    best = service.get("/v1/studies/e2e-hooked/best").json()
    last = max((attempts[0]["payload"] for attempts in new_best if attempts[0]["payload"]["study"] == "e2e-hooked"),
               key=lambda payload: payload["created_at"])  # the last leader announced is the study's best
    assert (last["data"]["trial_number"], last["data"]["params"]) == (best["trial_number"], best["params"])
    assert new_best and all([attempt["code"] for attempt in attempts][:2] == [500, 200] for attempts in new_best)

    # The deliveries as the API records them: status, attempts (2 where the receiver answered 500 first), codes.
    deliveries = [delivery for delivery in service.get(f"/v1/webhooks/{everything}/deliveries").json()["deliveries"]
                  if delivery["study"] in ours]
    assert {delivery["id"] for delivery in deliveries} == {key for key, attempts in by_id.items()
                                                           if attempts[0]["payload"]["hook"] == everything}
    for delivery in deliveries:
        assert delivery["status"] == "delivered" and delivery["last_status_code"] == 200 and delivery["delivered_at"]
        assert delivery["attempts"] == len(by_id[delivery["id"]]) == (2 if delivery["event"] == "new_best" else 1)
    shown = service.cli("webhooks", "deliveries", str(everything))
    assert shown.returncode == 0 and "new_best" in shown.stdout and "delivered" in shown.stdout
    study = service.get("/v1/studies/e2e-hooked").json()
    leaders = sum(attempts[0]["payload"]["study"] == "e2e-hooked" for attempts in new_best)
    assert study["webhooks"] == {"pending": 0, "delivered": leaders + 2, "failed": 0}
    metrics = {(sample.name, sample.labels.get("event"), sample.labels.get("status")): sample.value
               for family in text_string_to_metric_families(service.get("/metrics").text) for sample in family.samples}
    assert metrics[("regsearch_webhook_deliveries", "completed", "delivered")] >= 2
    assert metrics[("regsearch_webhook_delivery_attempts", "new_best", "delivered")] >= 2 * len(new_best)

    removed = service.cli("webhooks", "remove", str(only_completed))
    assert removed.returncode == 0, removed.stderr
    listing = service.cli("webhooks", "list").stdout.splitlines()  # a header, then the owner-wide hook alone
    assert len(listing) == 2 and listing[1].split()[:3] == [str(everything), "admin", "(all)"] and listing[1].endswith(receiver.url)
    assert service.get(f"/v1/webhooks/{only_completed}/deliveries").status_code == 404
    assert httpx.delete(f"{service.url}/v1/webhooks/{everything}", timeout=30).status_code == 204
    assert service.get("/v1/webhooks").json() == {"webhooks": []}


def test_webhook_hosts_and_schemes_outside_the_settings_are_refused_at_registration(service):
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
    assert httpx.delete(f"{service.url}/v1/webhooks/99999", timeout=30).status_code == 404


def test_worker_logs_read_well_and_a_graceful_stop_re_queues_without_a_traceback(service):
    """Last in the module: it stops the workers. SIGTERM mid-trial re-queues the trial in one line."""
    spec = {"name": "e2e-sigterm", "n_trials": 2, **SMALL, "epochs": 30, "pruner": "none"}
    assert service.post("/v1/studies", json=spec).status_code == 201
    wait_until(lambda: any(trial["intermediate_values"] for trial in service.get("/v1/studies/e2e-sigterm/trials").json()["trials"]),
               timeout=180, interval=0.5, what="a trial's first epoch")
    for worker in service.workers:
        kill_group(worker, signal.SIGTERM, timeout=60)
    assert [worker.returncode for worker in service.workers] == [0, 0]

    trials = service.get("/v1/studies/e2e-sigterm/trials").json()["trials"]
    handed_back = [trial for trial in trials if trial["fail_reason"] == "worker-shutdown"]
    assert handed_back and all(trial["state"] == "failed" for trial in handed_back)
    assert any(trial["state"] == "waiting" for trial in trials)  # re-queued with the same params
    for index in range(len(service.workers)):
        log = (service.root / f"worker{index}.log").read_text()
        assert "Traceback" not in log, log[-3000:]
        assert "cuInit" not in log and "Could not find cuda drivers" not in log, log[:3000]
        assert re.search(r"trains with Keras \S+ on (tensorflow|jax) \S+: (CPU only|\d+ GPU)", log), log[:3000]
    logs = "".join((service.root / f"worker{index}.log").read_text() for index in range(len(service.workers)))
    assert logs.count("re-queued with the same params") >= len(handed_back)
