"""What the API answers: the response models assembled from the study's row, its best-config history
and its Optuna study. Reads only; the routes (:mod:`service.api.routes.studies`) stay thin.

* :func:`study_out` (status, counts, best so far with its uncertainty, the study features' fields, links), and
  :func:`studies_out` for a listing;
* :func:`trials_out` and :func:`export_lines` (every trial, nested or as flat rows);
* :func:`best_config` (the best-config JSON, with its uncertainty and margin over the reference);
* :func:`importance_out` and :func:`best_model_file`;
* :func:`webhook_out` and :func:`deliveries_out` (a hook, and its deliveries with their attempts).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service import _rdb, features, stages, webhooks
from service._optuna import METRIC, retry_of
from service.confirmation import Confirmation
from service.coordination import best_record
from service.features import ModelInfoOut, MarginOut, WarmStartOut
from service.models import STAGE_ATTR, BestConfigRecord, DeliveryStatus, SearchStudy, StudyStatus, TrialStage, Webhook, WebhookDelivery, as_utc
from service.schemas import (
    BEST_SUMMARY_UNCERTAINTY, BestConfigOut, BestSummary, DeliveryCounts, DeliveryList, DeliveryOut, Links, StudyOut, StudySpec,
    TrialCounts, TrialList, TrialOut, WebhookCreated, WebhookPublic,
)
from service.studies import get_study
from trainer import TrialMetrics

__all__ = [
    "best_config",
    "best_model_file",
    "export_lines",
    "importance_out",
    "studies_out",
    "study_out",
    "trial_counts",
    "trials_out",
    "deliveries_out",
    "webhook_out",
]


def trial_counts(session: Session, name: str) -> TrialCounts:
    """The study's search trials (:func:`service.trials.is_search_trial`) per state."""
    by_state = _rdb.state_counts(session, name, where=_rdb.search_trial())
    counts = {field: by_state.get(state, 0) for state, field in _rdb.TRIAL_STATES.items()}
    if counts["failed"]:  # a trial ended by a stop is not a failure: counted apart
        stopped_where = sa.and_(_rdb.search_trial(), _rdb.has_user_attr("fail_reason", StudyStatus.STOPPED.value))
        stopped = _rdb.state_counts(session, name, where=stopped_where).get("FAIL", 0)
        counts.update(failed=counts["failed"] - stopped, stopped=stopped)
    return TrialCounts(**counts)


def study_out(session: Session, row: SearchStudy, spec: StudySpec | None = None, *,
              seconds: Mapping[tuple[str, str], float] | None = None, deliveries: Mapping[str, int] | None = None) -> StudyOut:
    """The study as the API shows it: status, trial counts, best so far, spec and links.

    ``spec``: the row's spec when the caller holds it parsed already (the row's JSON otherwise). ``seconds`` and
    ``deliveries``: the study's trial seconds and webhook deliveries when :func:`studies_out` read them for a whole
    listing at once (read here otherwise).
    """
    best = best_record(session, row.id)
    spec = spec if spec is not None else StudySpec.model_validate(row.spec)
    counts = trial_counts(session, row.name)
    deliveries = deliveries if deliveries is not None else webhooks.delivery_counts(session, [row.id], of="study")[row.id]
    return StudyOut(
        name=row.name,
        owner=row.owner,
        status=row.status,
        n_trials=row.n_trials,
        trials_finished=counts.complete + counts.pruned,  # the search trials finished (counts are of search trials)
        confirm_finished=session.scalar(sa.select(_rdb.count(row.name, "COMPLETE", where=_rdb.has_stage(TrialStage.CONFIRM)))) or 0,
        counts=counts,
        confirm_trials=row.confirm_trials or 0,
        search_ended_by=row.search_ended_by,
        usage=stages.usage(session, row, seconds),
        best=None if best is None else _best_summary(best),
        **_features_out(session, row.name, best, spec),
        error=row.error,
        spec=spec,
        created_at=as_utc(row.created_at),
        started_at=as_utc(row.started_at),
        finished_at=as_utc(row.finished_at),
        deleted_at=as_utc(row.deleted_at),
        webhooks=DeliveryCounts(**deliveries),
        links=_links(session, row.name),
    )


def studies_out(session: Session, rows: Sequence[SearchStudy]) -> list[StudyOut]:
    """The listed studies as :func:`study_out` shows each; their trial seconds and webhook deliveries read in one
    query each for the whole listing, not two per study."""
    if not rows:
        return []
    seconds = _rdb.trial_seconds(session, [row.name for row in rows])
    deliveries = webhooks.delivery_counts(session, [row.id for row in rows], of="study")
    return [study_out(session, row, seconds=seconds, deliveries=deliveries[row.id]) for row in rows]


def webhook_out(session: Session, hook: Webhook, secret: str | None = None) -> WebhookPublic:
    """A hook as the API shows it: with its deliveries by status; with its ``secret`` only when just created."""
    study = None if hook.study_id is None else session.scalar(sa.select(SearchStudy.name).where(SearchStudy.id == hook.study_id))
    fields = {"id": hook.id, "url": hook.url, "events": hook.events, "study": study, "owner": hook.owner,
              "created_at": as_utc(hook.created_at),
              "deliveries": DeliveryCounts(**webhooks.delivery_counts(session, [hook.id], of="hook")[hook.id])}
    return WebhookPublic(**fields) if secret is None else WebhookCreated(**fields, secret=secret)


def deliveries_out(session: Session, hook: Webhook, limit: int = 100) -> DeliveryList:
    """A hook's latest deliveries, newest first: status, attempts, the receiver's last answer."""
    names = dict(session.execute(sa.select(SearchStudy.id, SearchStudy.name).where(
        SearchStudy.id.in_(sa.select(WebhookDelivery.study_id).where(WebhookDelivery.hook_id == hook.id)))).all())
    return DeliveryList(deliveries=[
        DeliveryOut(id=row.id, event=row.event, study=names.get(row.study_id, "?"), status=row.status, attempts=row.attempts,
                    last_status_code=row.last_status_code, last_error=row.last_error, created_at=as_utc(row.created_at),
                    next_attempt_at=as_utc(row.next_attempt_at) if row.status == DeliveryStatus.PENDING else None,
                    delivered_at=as_utc(row.delivered_at))
        for row in webhooks.list_deliveries(session, hook_id=hook.id, limit=limit)
    ])


def _uncertainty(record: BestConfigRecord) -> Confirmation | None:
    """The stored :class:`~service.confirmation.Confirmation` of a best-config row (None for rows written before it)."""
    return Confirmation.model_validate(record.summary) if record.summary else None


def _best_summary(record: BestConfigRecord) -> BestSummary:
    summary = _uncertainty(record)
    uncertainty = summary.uncertainty().model_dump(include=set(BEST_SUMMARY_UNCERTAINTY)) if summary is not None else {}
    return BestSummary(
        value=record.value, trial_number=record.trial_number, params=record.params, best_since=as_utc(record.created_at),
        **uncertainty,
    )


def _links(session: Session, name: str) -> Links:
    optuna_id = _rdb.optuna_study_id(session, name)
    base = f"/v1/studies/{name}"
    return Links(
        self=base,
        trials=f"{base}/trials",
        best=f"{base}/best",
        stop=f"{base}/stop",
        dashboard=f"/dashboard/studies/{optuna_id}" if optuna_id is not None else "/dashboard",
    )


def _all_trials(storage: Any, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False)
    except KeyError:
        return []


def trials_out(session: Session, storage: Any, name: str) -> TrialList:
    """Every trial of the study (raises :class:`~service.studies.StudyNotFound` for an unknown name)."""
    get_study(session, name)
    return TrialList(study=name, trials=[_trial_out(trial) for trial in _all_trials(storage, name)])


def _trial_out(trial: Any) -> TrialOut:
    attrs = trial.user_attrs
    start, end = trial.datetime_start, trial.datetime_complete
    return TrialOut(
        **TrialMetrics.model_validate(attrs).model_dump(),
        number=trial.number,
        state=_rdb.TRIAL_STATES.get(trial.state.name, trial.state.name.lower()),
        stage=attrs.get(STAGE_ATTR) or TrialStage.SEARCH,
        params=features.trial_params(trial),
        value=trial.value if trial.state.name == "COMPLETE" else None,
        intermediate_values=dict(trial.intermediate_values),
        history=attrs.get("history", []),
        duration_s=None if start is None or end is None else (end - start).total_seconds(),
        datetime_start=_utc(start),
        datetime_complete=_utc(end),
        retry_of=retry_of(trial),
        fail_reason=attrs.get("fail_reason"),
        worker=attrs.get("worker"),
        confirms=attrs.get("confirms"),
        repeat=attrs.get("repeat"),
    )


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """Optuna stores naive local times; the API answers in UTC like everything else."""
    return None if value is None else value.astimezone(dt.timezone.utc)


# -- issue 11: what the study features add to the answers --


def _record_margin(record: BestConfigRecord, references: list[tuple[int, float]]) -> MarginOut | None:
    """The recorded best's margin over the reference (``references``: :func:`service._rdb.reference_trials`, read
    once by the caller). With the confirmation stage (issue 10) the reference is confirmed like a top config: the
    best's runs against the reference's runs (an interval once both have two); otherwise the single values."""
    if _is_reference_best(record, references):
        return None  # the best is the reference itself: no margin of a config over itself (BestConfig.is_reference)
    search_runs = [value for _, value in references]
    summary = _uncertainty(record)
    if summary is None or not summary.best.values:
        return features.margin(record.value, search_runs)
    numbers = {number for number, _ in references}
    reference_runs = [
        float(value) for candidate in summary.candidates if candidate.trial_number in numbers for value in candidate.values.values()
    ]
    return features.margin([float(value) for value in summary.best.values.values()], reference_runs or search_runs)


def _features_out(session: Session, name: str, best: BestConfigRecord | None, spec: StudySpec) -> dict[str, Any]:
    """StudyOut's issue-11 fields: ``reference``, ``margin``, ``warm_start``, ``model``."""
    warm_start = _rdb.study_system_attrs(session, name, features.WARM_START_ATTR).get(features.WARM_START_ATTR)
    model = None if best is None else _rdb.trial_system_attr(session, name, best.trial_number, features.MODEL_ATTR)
    return {
        "reference": features.reference_config(spec.search_space) if spec.reference else None,
        "margin": None if best is None else _record_margin(best, _rdb.reference_trials(session, name)),
        "warm_start": WarmStartOut.model_validate(warm_start) if warm_start else None,
        "model": ModelInfoOut.model_validate(model) if model else None,
    }


def _is_reference_best(record: BestConfigRecord, references: list[tuple[int, float]]) -> bool:
    """Whether the recorded best is the study's reference run (the defaults; ``references``:
    :func:`service._rdb.reference_trials`)."""
    return record.trial_number in {number for number, _ in references}


def best_config(session: Session, row: SearchStudy, data_dir: str | None = None) -> BestConfigOut | None:
    """The study's recipe and its best regularization so far (with its mean, interval, ties and robust
    ranges; ``confirmed`` false while confirmation runs), or None before any trial completes. ``data_dir``:
    the server's CIFAR-10 directory, which the answer names (``regsearch retrain`` finds it)."""
    record = best_record(session, row.id)
    if record is None:
        return None
    spec = StudySpec.model_validate(row.spec)
    summary = _uncertainty(record)
    references = _rdb.reference_trials(session, row.name)  # read once: the margin and is_reference both rest on it
    return BestConfigOut(
        **spec.recipe().model_dump(),
        **(summary.uncertainty().model_dump(exclude={"is_reference"}) if summary is not None else {}),
        params=record.params,
        study=row.name,
        trial_number=record.trial_number,
        value=record.value,
        metric=METRIC,
        train_size=record.train_size,
        best_since=as_utc(record.created_at),
        margin=_record_margin(record, references),
        is_reference=_is_reference_best(record, references),
        data_dir=data_dir,
    )


def export_lines(session: Session, storage: Any, name: str, output_format: str) -> Any:
    """The study's trials as text chunks: CSV lines or a JSON array (columns :data:`service.features.COLUMNS`).

    The trials are read now (an unknown study raises :class:`~service.studies.StudyNotFound` before
    streaming); rows are encoded one at a time as the response is sent.
    """
    get_study(session, name)
    rows = features.trial_rows(_all_trials(storage, name))
    return features.csv_lines(rows) if output_format == "csv" else features.json_chunks(rows)


def importance_out(factory: sessionmaker[Session], storage: Any, cache: features.ImportanceCache, name: str,
                   evaluator: str) -> features.ImportanceOut:
    """Each parameter's importance (blocking: call off the event loop); ``TooFewTrials`` below the minimum."""
    with factory() as session:
        get_study(session, name)
    return cache.get(optuna.load_study(study_name=name, storage=storage), evaluator)


def best_model_file(session: Session, storage: Any, store: Any, name: str, directory: str) -> tuple[Any, features.ModelInfoOut, dict[str, int]]:
    """Download the model of the study's best config into ``directory``: ``(path, record, disk usage)``;
    ``NoBestModel`` if none is stored."""
    row = get_study(session, name)
    best = best_record(session, row.id)
    if best is None:
        raise features.NoBestModel(f"study {name!r} has no complete trial yet")
    confirm = StudySpec.model_validate(row.spec).confirm  # which models the workers kept
    study = optuna.load_study(study_name=name, storage=storage)
    path = os.path.join(directory, features.MODEL_FILENAME)
    record = features.download_model(study, store, best.trial_number, path)
    return path, record, features.disk_usage(study, store, confirm)
