"""Study bookkeeping in SQL, shared by the API and the workers, and the API's views of it.

The invariants live here: one row per study name (identical re-submissions return it), the
trial-slot counter that keeps every study at or under ``n_trials`` whatever the number of workers,
the status transitions, and the best-config history (a row when the leader changes: see :class:`~service.models.BestConfigRecord`).
The routes answer with :func:`study_out` and :func:`trials_out`.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service import features
from service.db import (
    OPTUNA_STUDIES,
    OPTUNA_STUDY_SYSTEM_ATTRS,
    OPTUNA_TRIAL_SYSTEM_ATTRS,
    OPTUNA_TRIAL_USER_ATTRS,
    OPTUNA_TRIAL_VALUES,
    OPTUNA_TRIALS,
    session_scope,
)
from service.features import MarginOut, ModelInfoOut, ReferenceOut, WarmStartOut
from service.models import ACTIVE_STATUSES, SEARCH_STAGES, STAGE_ATTR, BestConfigRecord, SearchStudy, StudyStatus, TrialStage, as_utc, utc_now
from service.schemas import TRIAL_STATES, BestSummary, Links, StudyOut, StudySpec, TrialCounts, TrialList, TrialOut
from trainer import TrialMetrics

__all__ = [
    "StudyAlreadyEnded",
    "StudyConflict",
    "StudyNotFound",
    "best_record",
    "begin_confirmation",
    "claim_slot",
    "complete_if_done",
    "delete_study",
    "get_study",
    "has_waiting_trials",
    "is_search_trial",
    "margin_out",
    "is_reference_best",
    "record_margin",
    "best_model_file",
    "export_lines",
    "importance_out",
    "list_studies",
    "open_confirmation",
    "reclaim_leaked_slots",
    "record_best",
    "record_leader",
    "record_failure",
    "release_slot",
    "resume_confirmation",
    "runnable_studies",
    "status_of",
    "stop_study",
    "studies_with_running_trials",
    "study_out",
    "submit_study",
    "trial_counts",
    "trials_out",
]


class StudyNotFound(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"study {name!r} not found")
        self.name = name


class StudyAlreadyEnded(ValueError):
    def __init__(self, name: str, status: str) -> None:
        super().__init__(f"study {name!r} already {status}; nothing to stop")
        self.name = name


class StudyConflict(ValueError):
    def __init__(self, name: str, reason: str = "") -> None:
        super().__init__(
            f"a study named {name!r} already exists with a different spec; choose another name or DELETE it first"
            if not reason else f"a study named {name!r} already exists ({reason}); choose another name"
        )
        self.name = name


def _spec_dict(spec: StudySpec) -> dict[str, Any]:
    return spec.model_dump(mode="json")


def submit_study(factory: sessionmaker[Session], storage: Any, spec: StudySpec) -> tuple[SearchStudy, bool]:
    """Create the study (and its Optuna study); return ``(row, created)``.

    An identical spec under an existing name returns the existing row (``created=False``); a
    different one raises :class:`StudyConflict`. Concurrent identical submissions create one row:
    the unique name decides, the losers read the winner's row. A ``warm_start_from`` that cannot
    seed this study raises :class:`StudyNotFound` (or ``IncompatibleStudy``) before anything is
    written.

    The row is inserted holding all its trial slots (``claimed = n_trials``, just claimed) while its
    Optuna study is set up (:func:`_set_up_optuna_study`: the reference and the enqueued configs
    queued, the warm-start trials added), then the slots are released: no worker samples a point
    before those trials are queued. A creator that dies in between leaves the slots to the
    leaked-slot sweep (after the grace period); one whose set-up raises deletes the study again.
    """
    wanted = _spec_dict(spec)
    with factory() as session:
        existing = session.scalar(sa.select(SearchStudy).where(SearchStudy.name == spec.name))
    if existing is not None:
        if existing.spec != wanted:
            raise StudyConflict(spec.name)
        return existing, False
    warm_start = _warm_start(factory, storage, spec) if spec.warm_start_from else None
    row: SearchStudy | None = None
    created = False
    try:
        with session_scope(factory) as session:
            row = session.scalar(sa.select(SearchStudy).where(SearchStudy.name == spec.name))
            if row is None and session.scalar(sa.select(OPTUNA_STUDIES.c.study_id).where(OPTUNA_STUDIES.c.study_name == spec.name)) is not None:
                # A concurrent creator commits its row before it creates the Optuna study: look again.
                row = session.scalar(sa.select(SearchStudy).where(SearchStudy.name == spec.name))
                if row is None:
                    raise StudyConflict(spec.name, "an Optuna study of that name exists outside the service; it is never adopted")
            if row is None:
                now = utc_now()
                row = SearchStudy(name=spec.name, spec=wanted, n_trials=spec.n_trials, status=StudyStatus.QUEUED,
                                  claimed=spec.n_trials, claims_total=0, failed_trials=0, created_at=now,
                                  last_claim_at=now)  # slots held until the Optuna study is set up
                session.add(row)
                session.flush()
                created = True
    except sa.exc.IntegrityError:
        with factory() as session:
            row = session.scalar(sa.select(SearchStudy).where(SearchStudy.name == spec.name))
        created = False
    if row is None:  # deleted between the insert race and the read: let the client retry
        raise StudyConflict(spec.name)
    if not created:
        if row.spec != wanted:
            raise StudyConflict(spec.name)
        return row, False
    try:
        _set_up_optuna_study(storage, spec, warm_start)
    except BaseException:
        delete_study(factory, storage, spec.name)
        raise
    with session_scope(factory) as session:
        session.execute(
            sa.update(SearchStudy).where(SearchStudy.id == row.id, SearchStudy.claims_total == 0)
            .values(claimed=0, last_claim_at=None).execution_options(synchronize_session=False)
        )
    row.claimed, row.last_claim_at = 0, None
    return row, True


def _set_up_optuna_study(storage: Any, spec: StudySpec, warm_start: features.WarmStart | None) -> None:
    """Create the Optuna study; queue the reference, then the enqueued configs; add the warm-start trials."""
    import optuna

    from service._optuna import METRIC, open_study

    study = open_study(storage, spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([METRIC])  # the dashboard's axis label
    study.set_user_attr("regsearch_spec", _spec_dict(spec))
    # -- issue 11: the reference first, then the user's configs, then another study's trials --
    if spec.reference:
        features.enqueue_reference(study, spec.search_space)
    features.enqueue_configs(study, spec.enqueue, spec.search_space)
    if warm_start is not None:
        study.add_trials(warm_start.trials)
        storage.set_study_system_attr(study._study_id, WARM_START_ATTR, warm_start.to_dict())


def get_study(session: Session, name: str) -> SearchStudy:
    row = session.scalar(sa.select(SearchStudy).where(SearchStudy.name == name))
    if row is None:
        raise StudyNotFound(name)
    return row


def list_studies(session: Session) -> list[SearchStudy]:
    return list(session.scalars(sa.select(SearchStudy).order_by(SearchStudy.created_at, SearchStudy.id)))


def trial_counts(session: Session, name: str) -> TrialCounts:
    """The study's search trials (:func:`is_search_trial`) per state."""
    state = sa.cast(OPTUNA_TRIALS.c.state, sa.String)
    rows = session.execute(
        sa.select(state, sa.func.count())
        .select_from(OPTUNA_TRIALS.join(OPTUNA_STUDIES, OPTUNA_TRIALS.c.study_id == OPTUNA_STUDIES.c.study_id))
        .where(OPTUNA_STUDIES.c.study_name == name, _search_trial(OPTUNA_TRIALS.c.trial_id))
        .group_by(state)
    ).all()
    by_state = {str(name).rsplit(".", 1)[-1]: int(count) for name, count in rows}
    counts = {field: by_state.get(state, 0) for state, field in TRIAL_STATES.items()}
    if counts["failed"]:  # a trial ended by a stop is not a failure: counted apart
        stopped = session.scalar(
            sa.select(sa.func.count())
            .select_from(OPTUNA_TRIALS.join(OPTUNA_STUDIES, OPTUNA_TRIALS.c.study_id == OPTUNA_STUDIES.c.study_id))
            .where(OPTUNA_STUDIES.c.study_name == name, _search_trial(OPTUNA_TRIALS.c.trial_id),
                   sa.cast(OPTUNA_TRIALS.c.state, sa.String).like("%FAIL"),
                   sa.exists(sa.select(OPTUNA_TRIAL_USER_ATTRS.c.trial_user_attribute_id).where(
                       OPTUNA_TRIAL_USER_ATTRS.c.trial_id == OPTUNA_TRIALS.c.trial_id,
                       OPTUNA_TRIAL_USER_ATTRS.c.key == "fail_reason",
                       OPTUNA_TRIAL_USER_ATTRS.c.value_json == json.dumps(StudyStatus.STOPPED.value))))
        ) or 0
        counts.update(failed=counts["failed"] - stopped, stopped=stopped)
    return TrialCounts(**counts)


def best_record(session: Session, study_id: int) -> BestConfigRecord | None:
    """The current best: the study's last best-config row (see :class:`BestConfigRecord`)."""
    return session.scalar(
        sa.select(BestConfigRecord)
        .where(BestConfigRecord.study_id == study_id)
        .order_by(BestConfigRecord.id.desc())
        .limit(1)
    )


def stop_study(factory: sessionmaker[Session], name: str) -> SearchStudy:
    """Mark an active study stopped (workers stop its running trials within one epoch); idempotent.

    Raises :class:`StudyAlreadyEnded` for a study that already completed or failed.
    """
    with session_scope(factory) as session:
        row = get_study(session, name)
        session.execute(
            sa.update(SearchStudy)
            .where(SearchStudy.id == row.id, SearchStudy.status.in_(ACTIVE_STATUSES))
            .values(status=StudyStatus.STOPPED, finished_at=utc_now())
        )
        session.refresh(row)
    if row.status in (StudyStatus.COMPLETED, StudyStatus.FAILED):
        raise StudyAlreadyEnded(name, row.status)
    return row


def delete_study(factory: sessionmaker[Session], storage: Any, name: str, artifact_store: Any = None) -> None:
    """Delete the study, its best-config history, its Optuna study (trials included) and its artifacts."""
    import optuna

    with session_scope(factory) as session:
        # Write first, read nothing: of concurrent deletes exactly one deletes the row (the others 404).
        session.execute(sa.delete(BestConfigRecord).where(
            BestConfigRecord.study_id.in_(sa.select(SearchStudy.id).where(SearchStudy.name == name))))
        if session.execute(sa.delete(SearchStudy).where(SearchStudy.name == name)).rowcount != 1:
            raise StudyNotFound(name)
    try:
        if artifact_store is not None:
            features.remove_study_artifacts(optuna.load_study(study_name=name, storage=storage), artifact_store)
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:
        pass


def status_of(factory: sessionmaker[Session], study_id: int) -> StudyStatus | None:
    """The study's current status, or None once it has been deleted."""
    with factory() as session:
        status = session.scalar(sa.select(SearchStudy.status).where(SearchStudy.id == study_id))
    return None if status is None else StudyStatus(status)


def runnable_studies(session: Session) -> list[SearchStudy]:
    """Active studies, least-served first (so studies submitted side by side share the workers)."""
    return list(
        session.scalars(
            sa.select(SearchStudy)
            .where(SearchStudy.status.in_(ACTIVE_STATUSES))
            .order_by(SearchStudy.claimed, SearchStudy.id)
        )
    )


def claim_slot(factory: sessionmaker[Session], study_id: int) -> int | None:
    """Atomically take one of the study's ``n_trials`` slots (``n_trials + confirm_trials`` once its
    confirmation stage is planned); return its serial number, or None if full.

    A single conditional ``UPDATE ... RETURNING`` (one round trip, one commit): whichever the number
    of workers and the database, no more than ``n_trials`` slots are ever held at once.
    """
    now = utc_now()
    with session_scope(factory) as session:
        return session.execute(
            sa.update(SearchStudy)
            .where(
                SearchStudy.id == study_id,
                SearchStudy.claimed < SearchStudy.n_trials + SearchStudy.confirm_trials,
                SearchStudy.status.in_(ACTIVE_STATUSES),
            )
            .values(
                claimed=SearchStudy.claimed + 1,
                claims_total=SearchStudy.claims_total + 1,
                # queued -> running; a confirming study stays confirming
                status=sa.case((SearchStudy.status == StudyStatus.QUEUED.value, StudyStatus.RUNNING.value), else_=SearchStudy.status),
                started_at=sa.func.coalesce(SearchStudy.started_at, now),
                last_claim_at=now,
            )
            .returning(SearchStudy.claims_total)
            .execution_options(synchronize_session=False)
        ).scalar_one_or_none()


def release_slot(factory: sessionmaker[Session], study_id: int) -> None:
    """Give a slot back (its trial failed): the retry, or a fresh trial, takes it."""
    with session_scope(factory) as session:
        session.execute(
            sa.update(SearchStudy)
            .where(SearchStudy.id == study_id, SearchStudy.claimed > 0)
            .values(claimed=SearchStudy.claimed - 1)
            .execution_options(synchronize_session=False)
        )


def record_failure(factory: sessionmaker[Session], study_id: int, message: str, max_failed_trials: int) -> bool:
    """Count a trial whose training raised; mark the study failed after too many. Return True if it did."""
    with session_scope(factory) as session:
        session.execute(
            sa.update(SearchStudy)
            .where(SearchStudy.id == study_id)
            .values(failed_trials=SearchStudy.failed_trials + 1, error=message[:2000])
            .execution_options(synchronize_session=False)
        )
        result = session.execute(
            sa.update(SearchStudy)
            .where(
                SearchStudy.id == study_id,
                SearchStudy.failed_trials >= max_failed_trials,
                SearchStudy.status.in_(ACTIVE_STATUSES),
            )
            .values(status=StudyStatus.FAILED, finished_at=utc_now())
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1


def _lock_study(session: Session, study_id: int) -> bool:
    """Take the study row's write lock (PostgreSQL row lock; SQLite's database write lock)."""
    result = session.execute(
        sa.update(SearchStudy).where(SearchStudy.id == study_id).values(id=SearchStudy.id)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def record_best(
    factory: sessionmaker[Session], study_id: int, trial_number: int, value: float, params: dict[str, float],
    train_size: int | None,
) -> bool:
    """Append a best-config row if ``value`` beats the study's best so far; return True if it did."""
    with session_scope(factory) as session:
        if not _lock_study(session, study_id):
            return False
        current = session.scalar(sa.select(sa.func.max(BestConfigRecord.value)).where(BestConfigRecord.study_id == study_id))
        if current is not None and value <= current:
            return False
        session.add(BestConfigRecord(study_id=study_id, trial_number=trial_number, value=float(value),
                                     params=dict(params), train_size=train_size, created_at=utc_now()))
        return True


# -- which trials count towards n_trials (one rule, shared by the slot accounting and the API) --

#: Stages of the trials that count towards ``n_trials`` (the search): besides trials without a
#: ``stage`` user attribute (the sampler's, or ``"search"`` explicitly), the reference and the enqueued configs. Warm-start
#: trials (copied from another study) and confirmation repeats (issue 10) are counted apart.


def is_search_trial(trial: Any) -> bool:
    """Whether a trial counts towards ``n_trials``: its ``stage`` is absent or one of :data:`SEARCH_STAGES`."""
    stage = trial.user_attrs.get(STAGE_ATTR)
    return stage is None or stage in SEARCH_STAGES


def _search_trial(trial_id: Any) -> sa.ColumnElement[bool]:
    """SQL twin of :func:`is_search_trial` for the trial whose id is ``trial_id`` (a column)."""
    other_stage = sa.select(OPTUNA_TRIAL_USER_ATTRS.c.trial_user_attribute_id).where(
        OPTUNA_TRIAL_USER_ATTRS.c.trial_id == trial_id,
        OPTUNA_TRIAL_USER_ATTRS.c.key == STAGE_ATTR,
        OPTUNA_TRIAL_USER_ATTRS.c.value_json.not_in([json.dumps(stage) for stage in SEARCH_STAGES]),
    )
    return ~sa.exists(other_stage)


def _has_stage(trial_id: Any, *stages: str) -> sa.ColumnElement[bool]:
    """The trial whose id is ``trial_id`` (a column) has a ``stage`` user attribute among ``stages``."""
    return sa.exists(
        sa.select(OPTUNA_TRIAL_USER_ATTRS.c.trial_user_attribute_id).where(
            OPTUNA_TRIAL_USER_ATTRS.c.trial_id == trial_id,
            OPTUNA_TRIAL_USER_ATTRS.c.key == STAGE_ATTR,
            OPTUNA_TRIAL_USER_ATTRS.c.value_json.in_([json.dumps(stage) for stage in stages]),
        )
    )


def _holds_slot(trial_id: Any) -> sa.ColumnElement[bool]:
    """A search trial or a confirmation repeat (both run in the study's slots; warm-start copies do not)."""
    return sa.or_(_search_trial(trial_id), _has_stage(trial_id, TrialStage.CONFIRM))


def _trials_of(name: str, *states: str, which: Any = None) -> sa.Select:
    """``SELECT COUNT(*)`` of the Optuna study's trials in ``states`` (only those ``which(trial_id)``
    selects, if given), as a scalar subquery."""
    query = (
        sa.select(sa.func.count())
        .select_from(OPTUNA_TRIALS.join(OPTUNA_STUDIES, OPTUNA_TRIALS.c.study_id == OPTUNA_STUDIES.c.study_id))
        .where(OPTUNA_STUDIES.c.study_name == name, sa.cast(OPTUNA_TRIALS.c.state, sa.String).in_(states))
    )
    if which is not None:
        query = query.where(which(OPTUNA_TRIALS.c.trial_id))
    return query.scalar_subquery()


def _search_trials_of(name: str, *states: str) -> sa.Select:
    """``SELECT COUNT(*)`` of the study's search trials (:func:`is_search_trial`) in ``states``."""
    return _trials_of(name, *states, which=_search_trial)


def _confirm_trials_of(name: str, *states: str) -> sa.Select:
    """``SELECT COUNT(*)`` of the study's confirmation repeats (stage "confirm") in ``states``."""
    return _trials_of(name, *states, which=lambda trial_id: _has_stage(trial_id, TrialStage.CONFIRM))


def complete_if_done(factory: sessionmaker[Session], study_id: int, name: str, n_trials: int, *, confirm: bool = False) -> bool:
    """Mark the study completed once it is done; return True if this call did.

    Done: with ``confirm`` false (confirmation off), ``n_trials`` search trials finished (complete or
    pruned) and none runs; with it on, the confirmation stage's plan was enqueued (``confirm_trials``
    set, see :func:`service.stages.advance`) and no trial runs or waits (every repeat finished, or
    failed out of retries). One conditional UPDATE. ``claimed >= n_trials`` is implied (every
    finished trial holds a slot) and cheap, so the trial counts are only evaluated near the end.
    """
    confirmation_done = sa.and_(
        SearchStudy.status == StudyStatus.CONFIRMING.value,
        SearchStudy.confirm_trials > 0,
        _trials_of(name, "RUNNING") == 0,
        _trials_of(name, "WAITING") == 0,
    )
    done = confirmation_done if confirm else sa.or_(
        sa.and_(SearchStudy.status.in_((StudyStatus.QUEUED.value, StudyStatus.RUNNING.value)), _search_done(name)),
        confirmation_done,
    )
    with session_scope(factory) as session:
        result = session.execute(
            sa.update(SearchStudy)
            .where(SearchStudy.id == study_id, done)
            .values(status=StudyStatus.COMPLETED, finished_at=utc_now())
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1


def reclaim_leaked_slots(factory: sessionmaker[Session], study_id: int, name: str, grace_period_s: float) -> bool:
    """Give back slots that no trial holds (their worker died); return True if any was reclaimed.

    A slot is held by a COMPLETE, PRUNED or RUNNING trial (a failed trial's slot is given back by
    whoever failed it; a WAITING retry takes a slot only when a worker claims one for it). A worker
    killed after claiming but before its trial existed, or after failing a trial but before giving
    its slot back, leaves ``claimed`` above that count forever, and a full study would never
    complete. This one conditional UPDATE (same discipline as :func:`claim_slot`) resets
    ``claimed`` to the count, but only once the study has been quiet for the grace period: no
    claim and no trial finished within it, so no live worker can be between claiming a slot and
    creating its trial, nor between failing a trial and giving its slot back. (No read before the
    write: on SQLite a read transaction that turns into a write can fail outright under WAL.)
    """
    cutoff = dt.timedelta(seconds=grace_period_s)
    in_use = _trials_of(name, "COMPLETE", "PRUNED", "RUNNING", which=_holds_slot)
    finished_recently = sa.exists(
        sa.select(OPTUNA_TRIALS.c.trial_id)
        .select_from(OPTUNA_TRIALS.join(OPTUNA_STUDIES, OPTUNA_TRIALS.c.study_id == OPTUNA_STUDIES.c.study_id))
        .where(OPTUNA_STUDIES.c.study_name == name,
               OPTUNA_TRIALS.c.datetime_complete > dt.datetime.now() - cutoff)  # Optuna's naive local time
    )
    with session_scope(factory) as session:
        result = session.execute(
            sa.update(SearchStudy)
            .where(
                SearchStudy.id == study_id,
                SearchStudy.status.in_(ACTIVE_STATUSES),
                SearchStudy.claimed > in_use,
                sa.or_(SearchStudy.last_claim_at.is_(None), SearchStudy.last_claim_at < utc_now() - cutoff),
                ~finished_recently,
            )
            .values(claimed=in_use)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1


def studies_with_running_trials(
    session: Session, statuses: tuple[StudyStatus, ...] = (StudyStatus.STOPPED, StudyStatus.FAILED)
) -> list[SearchStudy]:
    """Studies in ``statuses`` that still have RUNNING trials (left by a dead worker, or still ending)."""
    running = (
        sa.select(OPTUNA_TRIALS.c.trial_id)
        .select_from(OPTUNA_TRIALS.join(OPTUNA_STUDIES, OPTUNA_TRIALS.c.study_id == OPTUNA_STUDIES.c.study_id))
        .where(OPTUNA_STUDIES.c.study_name == SearchStudy.name, sa.cast(OPTUNA_TRIALS.c.state, sa.String) == "RUNNING")
    )
    return list(session.scalars(sa.select(SearchStudy).where(SearchStudy.status.in_(statuses), sa.exists(running))))


# --------------------------------------------------------------------------------------------------
# The confirmation stage (issue 10): search trials are counted by :func:`is_search_trial` (one rule);
# confirmation repeats (stage "confirm") hold slots of their own (``confirm_trials``).


def _search_done(name: str) -> sa.ColumnElement[bool]:
    """The search's ``n_trials`` have finished (complete or pruned) and no trial runs."""
    return sa.and_(
        SearchStudy.claimed >= SearchStudy.n_trials,
        _search_trials_of(name, "COMPLETE", "PRUNED") >= SearchStudy.n_trials,
        _trials_of(name, "RUNNING") == 0,
    )


def begin_confirmation(factory: sessionmaker[Session], study_id: int, name: str) -> bool:
    """Move a study whose search is done from running to confirming; True for the one caller that did.

    ``confirm_trials`` stays 0, so no slot can be claimed until :func:`open_confirmation` (the
    caller enqueues the plan first). ``last_claim_at`` marks the move for :func:`resume_confirmation`.
    """
    with session_scope(factory) as session:
        result = session.execute(
            sa.update(SearchStudy)
            .where(
                SearchStudy.id == study_id,
                SearchStudy.status.in_((StudyStatus.QUEUED.value, StudyStatus.RUNNING.value)),
                _search_done(name),
            )
            .values(status=StudyStatus.CONFIRMING, confirm_trials=0, last_claim_at=utc_now())
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1


def resume_confirmation(factory: sessionmaker[Session], study_id: int, grace_period_s: float) -> bool:
    """Take over enqueueing a plan whose worker died half-way (confirming, no slot opened, quiet for the
    grace period); True for the one caller that did (it enqueues what is missing, then opens the slots)."""
    now = utc_now()
    with session_scope(factory) as session:
        result = session.execute(
            sa.update(SearchStudy)
            .where(
                SearchStudy.id == study_id,
                SearchStudy.status == StudyStatus.CONFIRMING.value,
                SearchStudy.confirm_trials == 0,
                sa.or_(SearchStudy.last_claim_at.is_(None), SearchStudy.last_claim_at < now - dt.timedelta(seconds=grace_period_s)),
            )
            .values(last_claim_at=now)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount == 1


def open_confirmation(factory: sessionmaker[Session], study_id: int, planned: int) -> None:
    """The plan is enqueued: open its ``planned`` slots (an empty plan completes the study)."""
    values: dict[str, Any] = {"confirm_trials": planned} if planned else {"status": StudyStatus.COMPLETED, "finished_at": utc_now()}
    with session_scope(factory) as session:
        session.execute(
            sa.update(SearchStudy)
            .where(SearchStudy.id == study_id, SearchStudy.status == StudyStatus.CONFIRMING.value, SearchStudy.confirm_trials == 0)
            .values(**values)
            .execution_options(synchronize_session=False)
        )


def has_waiting_trials(session: Session, name: str) -> bool:
    """Whether the study has a trial queued to run (a confirmation repeat, or a retry)."""
    return bool(session.scalar(sa.select(_trials_of(name, "WAITING"))))


def record_leader(
    factory: sessionmaker[Session], study_id: int, read_trials: Any, confirm: Any
) -> bool:
    """Bring the best-config history up to date after a trial completed; True when the leader changed.

    Under the study's row lock, ``read_trials()`` (the Optuna study's trials, read after the lock is
    taken so that the last writer saw every finished run) is summarized by
    :func:`service.confirmation.summarize`. A new row is appended when the leader (the config of the
    highest mean; during the search, the highest single value, so a row when it strictly improves)
    differs from the last row's; otherwise the last row's value (the mean) and summary are updated.
    """
    from service.confirmation import summarize

    with session_scope(factory) as session:
        if not _lock_study(session, study_id):
            return False
        trials = list(read_trials())
        summary = summarize(trials, confirm)
        if summary is None:
            return False
        best = summary.best
        data = summary.model_dump(mode="json")
        last = best_record(session, study_id)
        if last is not None and last.trial_number == best.trial_number:
            last.value, last.summary = float(best.mean), data
            return False
        train_size = next((trial.user_attrs.get("train_size") for trial in trials if trial.number == best.trial_number), None)
        session.add(BestConfigRecord(study_id=study_id, trial_number=best.trial_number, value=float(best.mean),
                                     params=dict(best.params), train_size=train_size, summary=data, created_at=utc_now()))
        return True


# --------------------------------------------------------------------------------------------------
# What the API answers


def study_out(session: Session, row: SearchStudy) -> StudyOut:
    """The study as the API shows it: status, trial counts, best so far, spec and links."""
    counts = trial_counts(session, row.name)
    best = best_record(session, row.id)
    spec = StudySpec.model_validate(row.spec)
    return StudyOut(
        name=row.name,
        status=row.status,
        n_trials=row.n_trials,
        trials_finished=session.scalar(sa.select(_search_trials_of(row.name, "COMPLETE", "PRUNED"))) or 0,
        confirm_finished=session.scalar(sa.select(_confirm_trials_of(row.name, "COMPLETE"))) or 0,
        counts=counts,
        confirm_trials=row.confirm_trials or 0,
        best=None if best is None else _best_summary(best),
        **_features_out(session, row.name, best, spec),
        error=row.error,
        spec=spec,
        created_at=as_utc(row.created_at),
        started_at=as_utc(row.started_at),
        finished_at=as_utc(row.finished_at),
        links=_links(session, row.name),
    )


def _best_summary(record: BestConfigRecord) -> BestSummary:
    stats = (record.summary or {}).get("best", {})
    return BestSummary(
        value=record.value, trial_number=record.trial_number, params=record.params, best_since=as_utc(record.created_at),
        n=stats.get("n"), ci_low=stats.get("ci_low"), ci_high=stats.get("ci_high"),
        confirmed=(record.summary or {}).get("confirmed"),
    )


def _links(session: Session, name: str) -> Links:
    optuna_id = session.scalar(sa.select(OPTUNA_STUDIES.c.study_id).where(OPTUNA_STUDIES.c.study_name == name))
    base = f"/v1/studies/{name}"
    return Links(
        self=base,
        trials=f"{base}/trials",
        best=f"{base}/best",
        stop=f"{base}/stop",
        dashboard=f"/dashboard/studies/{optuna_id}" if optuna_id is not None else "/dashboard",
    )


def trials_out(session: Session, storage: Any, name: str) -> TrialList:
    """Every trial of the study (raises :class:`StudyNotFound` for an unknown name)."""
    get_study(session, name)
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return TrialList(study=name, trials=[])
    return TrialList(study=name, trials=[_trial_out(trial) for trial in storage.get_all_trials(study_id, deepcopy=False)])


def _trial_out(trial: Any) -> TrialOut:
    from service._optuna import retry_of

    attrs = trial.user_attrs
    start, end = trial.datetime_start, trial.datetime_complete
    return TrialOut(
        **TrialMetrics.model_validate(attrs).model_dump(),
        number=trial.number,
        state=TRIAL_STATES.get(trial.state.name, trial.state.name.lower()),
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


# --------------------------------------------------------------------------------------------------
# Issue 11: what the study features add to the API's answers (plain SQL on Optuna's tables)

#: The study system attribute recording what ``warm_start_from`` added (:class:`service.features.WarmStart`).
WARM_START_ATTR = "regsearch:warm_start"


def _warm_start(factory: sessionmaker[Session], storage: Any, spec: StudySpec) -> features.WarmStart:
    """The source study's trials ready for ``add_trials``; ``StudyNotFound`` (404) or ``IncompatibleStudy`` (422)."""
    name = spec.warm_start_from
    with factory() as session:
        source = session.scalar(sa.select(SearchStudy).where(SearchStudy.name == name))
    if source is None:
        raise StudyNotFound(name)  # 404: the request is valid, the study it names does not exist
    try:
        trials = storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False)
    except KeyError:
        trials = []
    return features.warm_start_trials(
        trials, StudySpec.model_validate(source.spec), spec, source_name=name, max_gap=spec.max_gap
    )


def _study_system_attrs(session: Session, name: str, *keys: str) -> dict[str, Any]:
    rows = session.execute(
        sa.select(OPTUNA_STUDY_SYSTEM_ATTRS.c.key, OPTUNA_STUDY_SYSTEM_ATTRS.c.value_json)
        .select_from(OPTUNA_STUDY_SYSTEM_ATTRS.join(OPTUNA_STUDIES, OPTUNA_STUDY_SYSTEM_ATTRS.c.study_id == OPTUNA_STUDIES.c.study_id))
        .where(OPTUNA_STUDIES.c.study_name == name, OPTUNA_STUDY_SYSTEM_ATTRS.c.key.in_(keys))
    ).all()
    return {key: json.loads(value) for key, value in rows}


def _trial_system_attr(session: Session, name: str, number: int, key: str) -> Any:
    """A system attribute of the study's trial ``number`` (None if unset)."""
    value = session.scalar(
        sa.select(OPTUNA_TRIAL_SYSTEM_ATTRS.c.value_json)
        .select_from(
            OPTUNA_TRIAL_SYSTEM_ATTRS.join(OPTUNA_TRIALS, OPTUNA_TRIALS.c.trial_id == OPTUNA_TRIAL_SYSTEM_ATTRS.c.trial_id)
            .join(OPTUNA_STUDIES, OPTUNA_TRIALS.c.study_id == OPTUNA_STUDIES.c.study_id)
        )
        .where(OPTUNA_STUDIES.c.study_name == name, OPTUNA_TRIALS.c.number == number, OPTUNA_TRIAL_SYSTEM_ATTRS.c.key == key)
    )
    return None if value is None else json.loads(value)


def _reference_trials(session: Session, name: str) -> list[tuple[int, float]]:
    """``(number, value)`` of the study's COMPLETE reference trial(s) (stage "reference")."""
    query = (
        sa.select(OPTUNA_TRIALS.c.number, OPTUNA_TRIAL_VALUES.c.value)
        .select_from(
            OPTUNA_TRIALS.join(OPTUNA_STUDIES, OPTUNA_TRIALS.c.study_id == OPTUNA_STUDIES.c.study_id)
            .join(OPTUNA_TRIAL_VALUES, OPTUNA_TRIAL_VALUES.c.trial_id == OPTUNA_TRIALS.c.trial_id)
            .join(OPTUNA_TRIAL_USER_ATTRS, OPTUNA_TRIAL_USER_ATTRS.c.trial_id == OPTUNA_TRIALS.c.trial_id)
        )
        .where(
            OPTUNA_STUDIES.c.study_name == name,
            sa.cast(OPTUNA_TRIALS.c.state, sa.String) == "COMPLETE",
            OPTUNA_TRIAL_VALUES.c.objective == 0,
            OPTUNA_TRIAL_USER_ATTRS.c.key == STAGE_ATTR,
            OPTUNA_TRIAL_USER_ATTRS.c.value_json == json.dumps(TrialStage.REFERENCE),
        )
        .order_by(OPTUNA_TRIALS.c.number)
    )
    return [(int(number), float(value)) for number, value in session.execute(query)]


def reference_values(session: Session, name: str) -> list[float]:
    """The values of the study's COMPLETE reference trial(s) (their single search runs)."""
    return [value for _, value in _reference_trials(session, name)]


def margin_out(session: Session, name: str, best: float | list[float] | None, reference: list[float] | None = None) -> MarginOut | None:
    """The best's margin over the reference: ``best`` is the best's value (or its repeats' values);
    ``reference`` the reference's values (default: its single search runs)."""
    if best is None:
        return None
    margin = features.margin(best, reference_values(session, name) if reference is None else reference)
    return None if margin is None else MarginOut(**margin.to_dict())


def is_reference_best(session: Session, name: str, record: BestConfigRecord | None) -> bool | None:
    """Whether the recorded best is the study's reference run (the defaults); None before any best."""
    return None if record is None else record.trial_number in {number for number, _ in _reference_trials(session, name)}


def record_margin(session: Session, name: str, record: BestConfigRecord | None) -> MarginOut | None:
    """The recorded best's margin over the reference. With the confirmation stage (issue 10) the reference
    is confirmed like a top config: the best's runs against the reference's runs (an interval once both
    have two); otherwise the single values."""
    if record is None:
        return None
    references = {number for number, _ in _reference_trials(session, name)}
    if record.trial_number in references:
        return None  # the best is the reference itself: no margin of a config over itself (BestConfig.is_reference)
    summary = record.summary or {}
    runs = (summary.get("best") or {}).get("values")
    if not runs:
        return margin_out(session, name, record.value)
    reference_runs = [
        float(value)
        for candidate in summary.get("candidates", [])
        if candidate.get("trial_number") in references
        for value in candidate.get("values", {}).values()
    ]
    return margin_out(session, name, [float(value) for value in runs.values()], reference_runs or None)


def _features_out(session: Session, name: str, best: BestConfigRecord | None, spec: StudySpec) -> dict[str, Any]:
    """StudyOut's issue-11 fields: ``reference``, ``margin``, ``warm_start``, ``model``."""
    warm_start = _study_system_attrs(session, name, WARM_START_ATTR).get(WARM_START_ATTR)
    model = None if best is None else _trial_system_attr(session, name, best.trial_number, features.MODEL_ATTR)
    reference = features.reference_config(spec.search_space) if spec.reference else None
    return {
        "reference": ReferenceOut(**reference.to_dict()) if reference else None,
        "margin": record_margin(session, name, best),
        "warm_start": WarmStartOut(**warm_start) if warm_start else None,
        "model": ModelInfoOut(**model) if model else None,
    }


def export_lines(session: Session, storage: Any, name: str, output_format: str) -> Any:
    """The study's trials as text chunks: CSV lines or a JSON array (columns :data:`service.features.COLUMNS`).

    The trials are read now (an unknown study raises :class:`StudyNotFound` before streaming);
    rows are encoded one at a time as the response is sent.
    """
    get_study(session, name)
    try:
        trials = storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False)
    except KeyError:
        trials = []
    rows = features.trial_rows(trials)
    return features.csv_lines(rows) if output_format == "csv" else features.json_chunks(rows)


def importance_out(factory: sessionmaker[Session], storage: Any, cache: features.ImportanceCache, name: str,
                   evaluator: str) -> features.ImportanceOut:
    """Each parameter's importance (blocking: call off the event loop); ``TooFewTrials`` below the minimum."""
    import optuna

    with factory() as session:
        get_study(session, name)
    study = optuna.load_study(study_name=name, storage=storage)
    return features.ImportanceOut(**cache.get(study, evaluator).to_dict())


def best_model_file(session: Session, storage: Any, store: Any, name: str, directory: str) -> tuple[Any, features.BestModel, dict[str, int]]:
    """Download the model of the study's best config into ``directory``: ``(path, record, disk usage)``;
    ``NoBestModel`` if none is stored."""
    import os

    import optuna

    row = get_study(session, name)
    best = best_record(session, row.id)
    if best is None:
        raise features.NoBestModel(f"study {name!r} has no complete trial yet")
    confirm = StudySpec.model_validate(row.spec).confirm  # which models the workers kept
    study = optuna.load_study(study_name=name, storage=storage)
    path = os.path.join(directory, features.MODEL_FILENAME)
    record = features.download_model(study, store, best.trial_number, path)
    return path, record, features.disk_usage(study, store, confirm)
