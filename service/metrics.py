"""Prometheus metrics: HTTP traffic of the API, and the search's state read from SQL at scrape time.

Two sources, one registry per app (so several apps in one process never share series):

* **HTTP** (prometheus-fastapi-instrumentator): ``http_requests_total{handler,method,status}``
  and ``http_request_duration_seconds{handler,method}``, labelled by route *template*
  (``/v1/studies/{name}``), never by raw path, so the label set stays bounded.
* **Domain** (:class:`SearchCollector`, a prometheus-client custom collector): a handful of
  aggregate queries per scrape, nothing cached, nothing kept in the API process between scrapes.
  Every family is declared once in :data:`DOMAIN_METRICS`.

``instrument(app)`` wires both and adds the ``/metrics`` route. Who may scrape is decided by the
route (service/api/routes/metrics.py); see its docstring.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator

import sqlalchemy as sa
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector
from prometheus_fastapi_instrumentator import Instrumentator
from sqlalchemy.orm import Session

from service.db import OPTUNA_STUDIES, is_sqlite
from service.models import ACTIVE_STATUSES, BestConfigRecord, SearchStudy, StudyStatus

__all__ = ["DOMAIN_METRICS", "SearchCollector", "instrument", "new_registry"]

log = logging.getLogger(__name__)

#: name -> help text of every domain metric (the Grafana dashboard and the docs use these names).
DOMAIN_METRICS: dict[str, str] = {
    "regsearch_database_up": "1 when the last scrape could read the database, 0 otherwise.",
    "regsearch_studies": "Studies by status.",
    "regsearch_trials": "Optuna trials by study and state.",
    "regsearch_trials_running": "Trials running now, across all studies.",
    "regsearch_open_trial_slots": "Trial slots not yet claimed across queued, running and confirming studies "
    "(sum of n_trials + confirm_trials - claimed): the queue depth an autoscaler scales the workers on.",
    "regsearch_trial_duration_seconds": "Wall time of finished trials (datetime_complete - datetime_start), by study and state.",
    "regsearch_study_best_value": "Best objective value (validation accuracy) found so far, by study.",
    "regsearch_worker_heartbeat_age_seconds": "Seconds since the last heartbeat of each running trial, by worker.",
}

_TRIALS = sa.table(
    "trials", sa.column("trial_id"), sa.column("number"), sa.column("study_id"), sa.column("state"),
    sa.column("datetime_start", sa.DateTime), sa.column("datetime_complete", sa.DateTime),
)
_HEARTBEATS = sa.table("trial_heartbeats", sa.column("trial_id"), sa.column("heartbeat", sa.DateTime))
_USER_ATTRS = sa.table("trial_user_attributes", sa.column("trial_id"), sa.column("key"), sa.column("value_json"))
_FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")


def _state(value: object) -> str:
    """Optuna stores ``TrialState`` names (``RUNNING``); the API and the metrics use ``running``."""
    return str(value).rsplit(".", 1)[-1].lower()


def _seconds_between(start: sa.ColumnElement, end: sa.ColumnElement, sqlite: bool) -> sa.ColumnElement:
    if sqlite:
        return (sa.func.julianday(end) - sa.func.julianday(start)) * 86400.0
    return sa.extract("epoch", end - start)


class SearchCollector(Collector):
    """Reads the search's state from SQL on every scrape (a few GROUP BY queries)."""

    def __init__(self, session_factory: Callable[[], Session], database_url: str) -> None:
        self.session_factory = session_factory
        self.sqlite = is_sqlite(database_url)

    def describe(self) -> list[Metric]:
        return []  # dynamic: prometheus-client must not call collect() at registration

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("regsearch_database_up", DOMAIN_METRICS["regsearch_database_up"])
        try:
            with self.session_factory() as session:
                families = list(self._families(session))
        except sa.exc.SQLAlchemyError as error:
            # A scrape never fails on a database outage: it reports it, and the HTTP metrics still come.
            log.warning("metrics: database unreadable: %s", error.__class__.__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self, session: Session) -> Iterator[Metric]:
        studies = GaugeMetricFamily("regsearch_studies", DOMAIN_METRICS["regsearch_studies"], labels=["status"])
        counts = dict(session.execute(sa.select(SearchStudy.status, sa.func.count()).group_by(SearchStudy.status)).all())
        for status in StudyStatus:
            studies.add_metric([status], counts.get(status, 0))
        yield studies

        open_slots = session.execute(
            sa.select(sa.func.coalesce(sa.func.sum(SearchStudy.n_trials + SearchStudy.confirm_trials - SearchStudy.claimed), 0)).where(
                SearchStudy.status.in_(ACTIVE_STATUSES)
            )
        ).scalar_one()
        slots = GaugeMetricFamily("regsearch_open_trial_slots", DOMAIN_METRICS["regsearch_open_trial_slots"])
        slots.add_metric([], float(open_slots))
        yield slots

        joined = _TRIALS.join(OPTUNA_STUDIES, _TRIALS.c.study_id == OPTUNA_STUDIES.c.study_id)
        state = sa.cast(_TRIALS.c.state, sa.String)
        trials = GaugeMetricFamily("regsearch_trials", DOMAIN_METRICS["regsearch_trials"], labels=["study", "state"])
        running_total = 0
        for study, trial_state, count in session.execute(
            sa.select(OPTUNA_STUDIES.c.study_name, state, sa.func.count()).select_from(joined).group_by(OPTUNA_STUDIES.c.study_name, state)
        ):
            trials.add_metric([study, _state(trial_state)], count)
            if _state(trial_state) == "running":
                running_total += count
        yield trials
        running = GaugeMetricFamily("regsearch_trials_running", DOMAIN_METRICS["regsearch_trials_running"])
        running.add_metric([], running_total)
        yield running

        seconds = _seconds_between(_TRIALS.c.datetime_start, _TRIALS.c.datetime_complete, self.sqlite)
        duration = SummaryMetricFamily(
            "regsearch_trial_duration_seconds", DOMAIN_METRICS["regsearch_trial_duration_seconds"], labels=["study", "state"]
        )
        for study, trial_state, count, total in session.execute(
            sa.select(OPTUNA_STUDIES.c.study_name, state, sa.func.count(), sa.func.coalesce(sa.func.sum(seconds), 0.0))
            .select_from(joined)
            .where(state.in_(_FINISHED_STATES), _TRIALS.c.datetime_start.is_not(None), _TRIALS.c.datetime_complete.is_not(None))
            .group_by(OPTUNA_STUDIES.c.study_name, state)
        ):
            duration.add_metric([study, _state(trial_state)], count_value=count, sum_value=float(total))
        yield duration

        latest = sa.select(sa.func.max(BestConfigRecord.id)).group_by(BestConfigRecord.study_id).scalar_subquery()
        best = GaugeMetricFamily("regsearch_study_best_value", DOMAIN_METRICS["regsearch_study_best_value"], labels=["study"])
        for study, value in session.execute(
            sa.select(SearchStudy.name, BestConfigRecord.value).join(BestConfigRecord.study).where(BestConfigRecord.id.in_(latest))
        ):
            best.add_metric([study], value)
        yield best

        yield self._heartbeats(session, joined, state)

    def _heartbeats(self, session: Session, joined: sa.Join, state: sa.ColumnElement) -> Metric:
        """Age of each running trial's heartbeat, on the database's clock (as Optuna's stale check)."""
        family = GaugeMetricFamily(
            "regsearch_worker_heartbeat_age_seconds", DOMAIN_METRICS["regsearch_worker_heartbeat_age_seconds"],
            labels=["worker", "study", "trial"],
        )
        now = session.execute(sa.select(sa.func.now())).scalar_one()
        if isinstance(now, str):  # SQLite's CURRENT_TIMESTAMP comes back as text
            now = dt.datetime.fromisoformat(now)
        # PostgreSQL: heartbeats hold now() in the session's time zone, without the zone (as Optuna compares).
        now = now.replace(tzinfo=None)
        worker = _USER_ATTRS.alias("worker_attr")
        rows = session.execute(
            sa.select(OPTUNA_STUDIES.c.study_name, _TRIALS.c.number, worker.c.value_json, _HEARTBEATS.c.heartbeat)
            .select_from(
                joined.join(_HEARTBEATS, _HEARTBEATS.c.trial_id == _TRIALS.c.trial_id).outerjoin(
                    worker, sa.and_(worker.c.trial_id == _TRIALS.c.trial_id, worker.c.key == "worker")
                )
            )
            .where(state == "RUNNING")
        )
        for study, number, worker_json, heartbeat in rows:
            if isinstance(heartbeat, str):
                heartbeat = dt.datetime.fromisoformat(heartbeat)
            name = json.loads(worker_json) if worker_json else "unknown"
            family.add_metric([str(name), study, str(number)], max(0.0, (now - heartbeat.replace(tzinfo=None)).total_seconds()))
        return family


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=False)


def instrument(app: FastAPI) -> None:
    """HTTP metrics middleware + the SQL collector on ``app.state.metrics_registry``, and ``/metrics``."""
    from service.api.routes import metrics as metrics_routes

    registry = new_registry()
    Instrumentator(should_group_status_codes=False, excluded_handlers=["/metrics"], registry=registry).instrument(app)
    registry.register(SearchCollector(app.state.session_factory, app.state.settings.database_url))
    app.state.metrics_registry = registry
    app.include_router(metrics_routes.router)
