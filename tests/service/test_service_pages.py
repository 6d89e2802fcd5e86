"""The pages a user opens, in headless Chromium with every name but 127.0.0.1 unresolvable (offline):
``/docs`` and ``/redoc`` render every operation from assets served by the API itself, with no console
error; the dashboard tells the service's answer (its note) and shows the search without the confirmation
repeats, its "Best Trial" and importance agreeing with the API.

The study is seeded through the real writers (``submit_study``, real workers) with a stand-in training of
known scores, then a real ``regsearch serve`` serves it.
"""

from __future__ import annotations

import threading

import optuna
import pytest

from service.api.dashboard_view import listed_name
from service.models import ADMIN_OWNER
from service import studies
from service.config import Settings
from service.confirmation import repeat_seed
from service.db import create_engine, migrate, optuna_storage, session_factory
from service.objective import Trained
from service.schemas import StudySpec
from tests.browser import Page
from tests.support import LocalService, run_workers
from trainer import TrialMetrics

pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.WARNING)

NAME = "pages"
N_TRIALS = 11  # the reference and ten searched configs: importance needs ten complete trials


class Scores:
    """Known scores: quality grows with dropout_conv; repeats of the search's luckiest pick score lower."""

    def __init__(self, seed: int) -> None:
        self.repeats = {repeat_seed(seed, repeat) for repeat in (1, 2)}
        self.lock = threading.Lock()
        self.first_values: dict[float, float] = {}

    def __call__(self, spec, config, on_epoch_end, seed=None):
        value = 0.4 + 0.5 * (config.dropout_conv - 0.3) + 0.1 * config.l1_ratio
        if seed in self.repeats:
            value -= 0.02 + 0.03 * config.l1_ratio  # the single runs flattered the high l1 ratios
        for epoch in range(spec.epochs):
            on_epoch_end(epoch, {"val_accuracy": value, "accuracy": value + 0.05, "loss": 1.0, "val_loss": 1.1, "gap": 0.05})
        return Trained(TrialMetrics(val_accuracy=value, train_accuracy=value + 0.05, gap=0.05, train_size=270))


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("pages")
    svc = LocalService.at(root)
    settings = Settings(database_url=svc.env["REGSEARCH_DATABASE_URL"], heartbeat_interval=1, grace_period=4, poll_interval=0.05)
    migrate(settings)
    engine = create_engine(settings)
    storage = optuna_storage(settings)
    spec = StudySpec(name=NAME, n_trials=N_TRIALS, epochs=1, pruner="none", seed=3, confirm={"top_k": 3, "repeats": 2})
    studies.submit_study(session_factory(engine), storage, spec)
    run_workers(settings, Scores(spec.seed))
    storage.engine.dispose()
    engine.dispose()
    svc.start_server()
    try:
        yield svc
    finally:
        svc.stop()


def test_docs_and_redoc_render_every_operation_offline_with_no_console_error(service, chromium):
    schema = service.get("/openapi.json").json()
    operations = sum(1 for methods in schema["paths"].values() for method in methods if method in ("get", "post", "patch", "delete"))
    with Page(chromium) as page:
        shown = page.open(f"{service.url}/docs", "document.querySelectorAll('.opblock').length")
        assert shown == operations, page.errors
        shown = page.open(f"{service.url}/redoc", "document.querySelectorAll('[data-section-id^=\"operation/\"]').length")
        assert shown == operations, page.errors
        assert page.errors == []
        loaded = page.evaluate("performance.getEntriesByType('resource').map(entry => entry.name)")
    assert loaded and all(url.startswith(service.url) for url in loaded), loaded  # nothing from a CDN


def _dashboard_study(service) -> tuple[int, dict]:
    listing = service.get("/api/studies").json()["study_summaries"]
    study_id = next(study["study_id"] for study in listing if study["study_name"] == listed_name(NAME, ADMIN_OWNER))
    return study_id, service.get(f"/api/studies/{study_id}").json()


def test_the_dashboard_shows_the_search_without_its_repeats_and_the_apis_best(service):
    trials = service.get(f"/v1/studies/{NAME}/trials").json()["trials"]
    search = sorted(trial["number"] for trial in trials if trial["confirms"] is None)
    repeats = [trial for trial in trials if trial["confirms"] is not None]
    assert len(search) == N_TRIALS and len(repeats) == (3 + 1) * 2  # the top 3 and the reference, twice each
    best = service.get(f"/v1/studies/{NAME}/best").json()
    assert best["confirmed"] is True and best["n"] == 3

    study_id, detail = _dashboard_study(service)
    assert sorted(trial["number"] for trial in detail["trials"]) == search  # history: the search alone
    [shown] = detail["best_trials"]
    assert shown["number"] == best["trial_number"] and shown["values"] == [pytest.approx(best["value"])]  # the mean

    # One importance: the dashboard's and the API's rest on the same trials with the same evaluator.
    dashboard = service.get(f"/api/studies/{study_id}/param_importances").json()["param_importances"][0]
    api = service.get(f"/v1/studies/{NAME}/importance").json()
    assert api["evaluator"] == "ped-anova" and api["n_trials"] == N_TRIALS
    assert {item["name"]: item["importance"] for item in dashboard} == pytest.approx(api["importances"])

    # The note is the service's answer, updated with it.
    note = detail["note"]["body"]
    assert f"**Best config: trial {best['trial_number']}**" in note and f"{best['value']:.4f}" in note
    assert f"CI [{best['ci_low']:.4f}, {best['ci_high']:.4f}]" in note
    assert "Margin over the defaults" in note and f"{best['margin']['value']:+.4f}" in note
    assert ("tied with trial" in note) == bool(best["ties"]) and "8 confirmation repeats" in note
    assert f"(/v1/studies/{NAME}/report)" in note


def test_the_dashboard_page_renders_the_note_in_chromium(service, chromium):
    study_id, _detail = _dashboard_study(service)
    best = service.get(f"/v1/studies/{NAME}/best").json()
    with Page(chromium) as page:
        # The study's page: its "Best Trial" card is the service's best, with the mean over its runs.
        text = page.open(f"{service.url}/dashboard/studies/{study_id}",
                         "document.body.innerText.includes('Best Trial (number=') && document.body.innerText")
        assert f"Best Trial (number={best['trial_number']})" in text and f"{best['value']:.4f}"[:-1] in text
        # The note, rendered from Markdown: the service's answer and a link to the study's report.
        text = page.open(f"{service.url}/dashboard/studies/{study_id}/note",
                         "document.body.innerText.includes('Best config: trial') && document.body.innerText")
        links = page.evaluate("[...document.querySelectorAll('a')].map(a => a.getAttribute('href'))")
        assert page.errors == [], page.errors
    assert f"Best config: trial {best['trial_number']}" in text and "the service's answer" in text
    assert "robust range" in text and "Margin over the defaults" in text and "8 confirmation repeats" in text
    assert f"/v1/studies/{NAME}/report" in links
