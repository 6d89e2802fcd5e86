"""How many SQL statements the reads cost, counted on the real engine (SQLAlchemy's ``before_cursor_execute``) of a
real SQLite or PostgreSQL database: the API's app in-process with its own engine, and a real worker in-process on
stand-in training. The counts must not grow with the number of studies listed, nor per part of an answer that
rests on the same rows, nor per budget a worker checks after each epoch."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import optuna
import sqlalchemy as sa
from fastapi.testclient import TestClient

from service import studies
from service.api import create_app
from service.config import Settings
from service.objective import Trained
from service.schemas import StudySpec
from trainer import TrialMetrics
from tests.support import run_workers, seed_trials

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPEC = {"n_trials": 4, "epochs": 1, "width": 0.25, "data": {"train_size": 300}}


class Statements(list):
    """``(sql, parameters)`` of every statement the watched engine(s) run (in ``thread`` only, if given)."""

    def __init__(self, thread: int | None = None) -> None:
        super().__init__()
        self.thread = thread

    def __call__(self, _conn, _cursor, statement, parameters, _context, _executemany) -> None:
        if self.thread is None or threading.get_ident() == self.thread:
            self.append((statement, repr(parameters)))

    def matching(self, predicate: Callable[[str, str], bool]) -> int:
        return sum(1 for sql, parameters in self if predicate(sql, parameters))


@contextmanager
def recorded(target, thread: int | None = None) -> Iterator[Statements]:
    """Record the statements of ``target``: an engine, or ``sa.engine.Engine`` for every engine of this process."""
    statements = Statements(thread)
    sa.event.listen(target, "before_cursor_execute", statements)
    try:
        yield statements
    finally:
        sa.event.remove(target, "before_cursor_execute", statements)


def sums_durations(sql: str, _parameters: str = "") -> bool:
    """A statement that computes trial durations (:class:`service._rdb.seconds_between`, as each dialect writes it)."""
    return "julianday(" in sql or "EXTRACT(epoch" in sql


def reads_deliveries(sql: str, _parameters: str) -> bool:
    return "regsearch_webhook_deliveries" in sql


def reads_reference_trials(sql: str, parameters: str) -> bool:
    """:func:`service._rdb.reference_trials`: the only read of trial values for the trials of stage "reference"."""
    return "trial_values" in sql and '"reference"' in parameters


@contextmanager
def api(storage_url: str, **settings) -> Iterator[tuple[TestClient, sa.Engine]]:
    app = create_app(Settings(database_url=storage_url, **settings), dashboard=False)
    with TestClient(app) as client:
        yield client, app.state.engine
    app.state.engine.dispose()
    app.state.optuna_storage.engine.dispose()


def test_listing_studies_reads_usage_and_webhook_counts_once_whatever_the_number_of_studies(storage_url):
    with api(storage_url, webhook_allowed_hosts="hooks.example.org") as (client, engine):
        for name in ("list-a", "list-b", "list-c"):
            assert client.post("/v1/studies", json={**SPEC, "name": name}).status_code == 201
            seed_trials(storage_url, name, [0.5, 0.6])
        hook = client.post("/v1/webhooks", json={"url": "https://hooks.example.org/x", "study": "list-b", "events": ["stopped"]})
        assert hook.status_code == 201, hook.text
        assert client.post("/v1/studies/list-b/stop").status_code == 200  # one pending delivery for list-b
        single = {name: client.get(f"/v1/studies/{name}").json() for name in ("list-a", "list-b", "list-c")}

        costs = {}
        for owner, listed in (("nobody", 0), (None, 3)):  # an empty page, then the three studies
            with recorded(engine) as statements:
                response = client.get("/v1/studies", params={"owner": owner} if owner else {})
            assert response.status_code == 200 and len(response.json()["studies"]) == listed
            costs[listed] = statements
        page = {study["name"]: study for study in response.json()["studies"]}

    assert costs[0].matching(sums_durations) == costs[0].matching(reads_deliveries) == 0
    assert costs[3].matching(sums_durations) == 1, [sql for sql, _ in costs[3] if sums_durations(sql)]
    assert costs[3].matching(reads_deliveries) == 1
    # The batched reads answer what each study's own page answers.
    for name, study in single.items():
        assert page[name]["usage"]["trial_hours"] == study["usage"]["trial_hours"] > 0
        assert page[name]["webhooks"] == study["webhooks"] == {"pending": int(name == "list-b"), "delivered": 0, "failed": 0}


def test_the_best_and_the_study_read_the_reference_trials_once(storage_url):
    with api(storage_url) as (client, engine):
        assert client.post("/v1/studies", json={**SPEC, "name": "refs"}).status_code == 201
        seed_trials(storage_url, "refs", [0.5, 0.7, 0.6])  # the queued reference first: 0.5
        with recorded(engine) as best_reads:
            best = client.get("/v1/studies/refs/best")
        with recorded(engine) as study_reads:
            study = client.get("/v1/studies/refs")
    assert best.status_code == 200 and study.status_code == 200
    best, study = best.json(), study.json()
    assert best["is_reference"] is False and best["value"] == 0.7
    assert best["margin"]["value"] == study["margin"]["value"] == 0.7 - 0.5
    assert best_reads.matching(reads_reference_trials) == 1
    assert study_reads.matching(reads_reference_trials) == 1


class CountedEpochs:
    """A stand-in training of known epochs that records, for each epoch, the statements its worker's epoch report
    runs (in the worker's thread: not the heartbeats', not the other threads')."""

    def __init__(self) -> None:
        self.epochs: dict[str, list[Statements]] = {}

    def __call__(self, spec, config, on_epoch_end, seed=None):
        for epoch in range(spec.epochs):
            with recorded(sa.engine.Engine, thread=threading.get_ident()) as statements:
                self.epochs.setdefault(spec.name, []).append(statements)  # kept when the report ends the trial (raises)
                on_epoch_end(epoch, {"val_accuracy": 0.5, "accuracy": 0.55, "loss": 1.0, "val_loss": 1.1, "gap": 0.05})
        return Trained(TrialMetrics(val_accuracy=0.5, train_accuracy=0.55, gap=0.05, train_size=270))


def test_an_epoch_report_checks_the_trial_hours_in_the_query_it_makes_anyway(database):
    """With ``max_trial_hours`` set, an epoch report reads the study's row and the search's trial-hours in one
    statement (the lifecycle's), no second one; and the hours it reads do end the search once spent."""
    settings, factory, storage = database
    common = {"epochs": 3, "pruner": "none", "reference": False, "confirm": {"top_k": 0}}
    studies.submit_study(factory, storage, StudySpec(name="roomy", n_trials=2, max_trial_hours=100.0, **common))
    studies.submit_study(factory, storage, StudySpec(name="tight", n_trials=20, max_trial_hours=1e-9, **common))
    train = CountedEpochs()
    run_workers(settings, train, count=1)

    reports = train.epochs["roomy"]
    assert len(reports) == 2 * 3  # every epoch of both trials ran: the budget is far from spent
    for statements in reports:
        rows = [sql for sql, _ in statements if "regsearch_studies" in sql]
        assert len(rows) == 1 and sums_durations(rows[0]), rows  # the lifecycle, with the trial-hours in it
        assert statements.matching(sums_durations) == 1
    with factory() as session:
        tight = studies.get_study(session, "tight")
    assert (tight.status, tight.search_ended_by) == ("completed", "max_trial_hours")
    assert len(train.epochs["tight"]) == 1  # its first epoch spent the budget: the trial ended there, pruned
