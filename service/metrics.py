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
import logging
from collections.abc import Callable, Iterator

import sqlalchemy as sa
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector
from prometheus_fastapi_instrumentator import Instrumentator
from sqlalchemy.orm import Session, load_only

from service import _rdb, stages
from service.models import ACTIVE_STATUSES, BestConfigRecord, DeliveryStatus, SearchStudy, StudyStatus, WebhookDelivery, WebhookEvent

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
    "regsearch_webhook_deliveries": "Webhook deliveries by status (pending, delivered, failed) and event.",
    "regsearch_webhook_delivery_attempts": "Delivery attempts made, by the deliveries' status and event (attempts above "
    "deliveries: retries after an error or a non-2xx answer).",
    "regsearch_study_runtime_seconds": "Seconds since the study's first trial started (to its end once it ended): "
    "what max_runtime_s bounds, by study.",
    "regsearch_study_trial_hours": "Summed trial durations in hours, by study and stage (search: what max_trial_hours "
    "bounds; confirm: what confirm.max_hours bounds).",
    "regsearch_study_budget_used_ratio": "Share of each set budget used (1 = spent), by study and budget "
    "(max_runtime_s, max_trial_hours).",
    "regsearch_study_search_ended": "1 for the rule that ended each study's search, by study and reason "
    "(n_trials, max_runtime_s, max_trial_hours, target, no_improvement_trials).",
}

class SearchCollector(Collector):
    """Reads the search's state from SQL on every scrape (a few GROUP BY queries)."""

    def __init__(self, session_factory: Callable[[], Session]) -> None:
        self.session_factory = session_factory

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

        trials = GaugeMetricFamily("regsearch_trials", DOMAIN_METRICS["regsearch_trials"], labels=["study", "state"])
        running_total = 0
        for study, trial_state, count in _rdb.trials_by_study_and_state(session):
            trials.add_metric([study, trial_state.lower()], count)
            if trial_state == "RUNNING":
                running_total += count
        yield trials
        running = GaugeMetricFamily("regsearch_trials_running", DOMAIN_METRICS["regsearch_trials_running"])
        running.add_metric([], running_total)
        yield running

        duration = SummaryMetricFamily(
            "regsearch_trial_duration_seconds", DOMAIN_METRICS["regsearch_trial_duration_seconds"], labels=["study", "state"]
        )
        for study, trial_state, count, total in _rdb.trial_durations(session):
            duration.add_metric([study, trial_state.lower()], count_value=count, sum_value=total)
        yield duration

        latest = sa.select(sa.func.max(BestConfigRecord.id)).group_by(BestConfigRecord.study_id).scalar_subquery()
        best = GaugeMetricFamily("regsearch_study_best_value", DOMAIN_METRICS["regsearch_study_best_value"], labels=["study"])
        for study, value in session.execute(
            sa.select(SearchStudy.name, BestConfigRecord.value).join(BestConfigRecord.study).where(BestConfigRecord.id.in_(latest))
        ):
            best.add_metric([study], value)
        yield best

        yield self._heartbeats(session)
        yield from self._webhooks(session)
        yield from self._budgets(session)

    def _webhooks(self, session: Session) -> Iterator[Metric]:
        deliveries = GaugeMetricFamily("regsearch_webhook_deliveries", DOMAIN_METRICS["regsearch_webhook_deliveries"],
                                       labels=["status", "event"])
        attempts = GaugeMetricFamily("regsearch_webhook_delivery_attempts", DOMAIN_METRICS["regsearch_webhook_delivery_attempts"],
                                     labels=["status", "event"])
        rows = {(status, event): (count, tries) for status, event, count, tries in session.execute(
            sa.select(WebhookDelivery.status, WebhookDelivery.event, sa.func.count(), sa.func.coalesce(sa.func.sum(WebhookDelivery.attempts), 0))
            .group_by(WebhookDelivery.status, WebhookDelivery.event))}
        for status in DeliveryStatus:
            for event in WebhookEvent:
                count, tries = rows.get((status.value, event.value), (0, 0))
                deliveries.add_metric([status, event], count)
                attempts.add_metric([status, event], tries)
        yield deliveries
        yield attempts

    def _budgets(self, session: Session) -> Iterator[Metric]:
        """Runtime, trial-hours, the share of each budget used, and the rule that ended each search."""
        names = DOMAIN_METRICS
        runtime = GaugeMetricFamily("regsearch_study_runtime_seconds", names["regsearch_study_runtime_seconds"], labels=["study"])
        hours = GaugeMetricFamily("regsearch_study_trial_hours", names["regsearch_study_trial_hours"], labels=["study", "stage"])
        used = GaugeMetricFamily("regsearch_study_budget_used_ratio", names["regsearch_study_budget_used_ratio"],
                                 labels=["study", "budget"])
        ended = GaugeMetricFamily("regsearch_study_search_ended", names["regsearch_study_search_ended"], labels=["study", "reason"])
        seconds = _rdb.trial_seconds(session)
        columns = (SearchStudy.name, SearchStudy.started_at, SearchStudy.finished_at, SearchStudy.max_runtime_s,
                   SearchStudy.max_trial_hours, SearchStudy.search_ended_by)  # what the gauges need, not the specs
        for row in session.scalars(sa.select(SearchStudy).options(load_only(*columns)).where(SearchStudy.deleted_at.is_(None))):
            spent = stages.usage(session, row, seconds)
            elapsed = spent.runtime_s or 0.0
            runtime.add_metric([row.name], elapsed)
            hours.add_metric([row.name, "search"], spent.trial_hours)
            hours.add_metric([row.name, "confirm"], spent.confirm_trial_hours)
            if row.max_runtime_s:
                used.add_metric([row.name, "max_runtime_s"], elapsed / row.max_runtime_s)
            if row.max_trial_hours:
                used.add_metric([row.name, "max_trial_hours"], spent.trial_hours / row.max_trial_hours)
            if row.search_ended_by:
                ended.add_metric([row.name, row.search_ended_by], 1)
        yield from (runtime, hours, used, ended)

    def _heartbeats(self, session: Session) -> Metric:
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
        for study, number, worker, heartbeat in _rdb.running_heartbeats(session):
            age = max(0.0, (now - heartbeat.replace(tzinfo=None)).total_seconds())
            family.add_metric([str(worker or "unknown"), study, str(number)], age)
        return family


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=False)


def instrument(app: FastAPI) -> None:
    """HTTP metrics middleware + the SQL collector on ``app.state.metrics_registry``, and ``/metrics``."""
    from service.api.routes import metrics as metrics_routes

    registry = new_registry()
    Instrumentator(should_group_status_codes=False, excluded_handlers=["/metrics"], registry=registry).instrument(app)
    registry.register(SearchCollector(app.state.session_factory))
    app.state.metrics_registry = registry
    app.include_router(metrics_routes.router)
