"""Study bookkeeping in SQL, shared by the API and the workers, and the API's views of it.

The invariants live here: one row per study name (identical re-submissions return it), the
trial-slot counter that keeps every study at or under ``n_trials`` whatever the number of workers,
the status transitions, and the best-config history (a row when the leader changes: see :class:`~service.models.BestConfigRecord`).
The routes answer with :func:`study_out` and :func:`trials_out`.
"""

from __future__ import annotations

import datetime as dt
import warnings
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service.db import OPTUNA_STUDIES, OPTUNA_TRIALS, session_scope, trial_state_counts
from service.models import ACTIVE_STATUSES, BestConfigRecord, SearchStudy, StudyStatus, as_utc, utc_now
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
    def __init__(self, name: str) -> None:
        super().__init__(
            f"a study named {name!r} already exists with a different spec; choose another name or DELETE it first"
        )
        self.name = name


def _spec_dict(spec: StudySpec) -> dict[str, Any]:
    return spec.model_dump(mode="json")


def submit_study(factory: sessionmaker[Session], storage: Any, spec: StudySpec) -> tuple[SearchStudy, bool]:
    """Create the study (and its Optuna study); return ``(row, created)``.

    An identical spec under an existing name returns the existing row (``created=False``); a
    different one raises :class:`StudyConflict`. Concurrent identical submissions create one row:
    the unique name decides, the losers read the winner's row.
    """
    import optuna

    from service._optuna import METRIC, open_study

    wanted = _spec_dict(spec)
    row: SearchStudy | None = None
    created = False
    try:
        with session_scope(factory) as session:
            row = session.scalar(sa.select(SearchStudy).where(SearchStudy.name == spec.name))
            if row is None:
                row = SearchStudy(name=spec.name, spec=wanted, n_trials=spec.n_trials, status=StudyStatus.QUEUED,
                                  claimed=0, claims_total=0, failed_trials=0, created_at=utc_now())
                session.add(row)
                session.flush()
                created = True
    except sa.exc.IntegrityError:
        with factory() as session:
            row = session.scalar(sa.select(SearchStudy).where(SearchStudy.name == spec.name))
        created = False
    if row is None:  # deleted between the insert race and the read: let the client retry
        raise StudyConflict(spec.name)
    if not created and row.spec != wanted:
        raise StudyConflict(spec.name)
    study = open_study(storage, spec)
    if created:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC])  # the dashboard's axis label
        study.set_user_attr("regsearch_spec", wanted)
    return row, created


def get_study(session: Session, name: str) -> SearchStudy:
    row = session.scalar(sa.select(SearchStudy).where(SearchStudy.name == name))
    if row is None:
        raise StudyNotFound(name)
    return row


def list_studies(session: Session) -> list[SearchStudy]:
    return list(session.scalars(sa.select(SearchStudy).order_by(SearchStudy.created_at, SearchStudy.id)))


def trial_counts(session: Session, name: str) -> TrialCounts:
    by_state = trial_state_counts(session, name)
    return TrialCounts(**{field: by_state.get(state, 0) for state, field in TRIAL_STATES.items()})


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


def delete_study(factory: sessionmaker[Session], storage: Any, name: str) -> None:
    """Delete the study, its best-config history and its Optuna study (trials included)."""
    import optuna

    with session_scope(factory) as session:
        row = get_study(session, name)
        session.execute(sa.delete(BestConfigRecord).where(BestConfigRecord.study_id == row.id))
        session.delete(row)
    try:
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


def _trials_of(name: str, *states: str) -> sa.Select:
    """``SELECT COUNT(*)`` of the Optuna study's trials in ``states``, as a scalar subquery."""
    return (
        sa.select(sa.func.count())
        .select_from(OPTUNA_TRIALS.join(OPTUNA_STUDIES, OPTUNA_TRIALS.c.study_id == OPTUNA_STUDIES.c.study_id))
        .where(OPTUNA_STUDIES.c.study_name == name, sa.cast(OPTUNA_TRIALS.c.state, sa.String).in_(states))
        .scalar_subquery()
    )


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
    in_use = _trials_of(name, "COMPLETE", "PRUNED", "RUNNING")
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
# Search trials and the confirmation stage (issue 10)
#
# A *search trial* counts towards ``n_trials``: its ``stage`` user attribute is absent or one of
# SEARCH_STAGES (the reference config and user-enqueued configs are search trials); confirmation
# repeats (stage "confirm") and imported warm-start trials (stage "warm_start") are not.

#: Stages of trials that count towards ``n_trials`` (besides trials with no stage at all).
SEARCH_STAGES = ("reference", "enqueued")

OPTUNA_TRIAL_USER_ATTRS = sa.table(
    "trial_user_attributes", sa.column("trial_id"), sa.column("key"), sa.column("value_json")
)


def is_search_trial(trial: Any) -> bool:
    """Whether ``trial`` (an Optuna ``FrozenTrial``) counts towards ``n_trials``: no stage, or a search stage."""
    stage = trial.user_attrs.get("stage")
    return stage is None or stage in SEARCH_STAGES


def _search_trials_of(name: str, *states: str) -> sa.Select:
    """``SELECT COUNT(*)`` of the study's *search* trials in ``states`` (SQL form of :func:`is_search_trial`)."""
    import json

    other_stage = sa.exists(
        sa.select(OPTUNA_TRIAL_USER_ATTRS.c.trial_id).where(
            OPTUNA_TRIAL_USER_ATTRS.c.trial_id == OPTUNA_TRIALS.c.trial_id,
            OPTUNA_TRIAL_USER_ATTRS.c.key == "stage",
            OPTUNA_TRIAL_USER_ATTRS.c.value_json.not_in([json.dumps(stage) for stage in SEARCH_STAGES]),
        )
    )
    return (
        sa.select(sa.func.count())
        .select_from(OPTUNA_TRIALS.join(OPTUNA_STUDIES, OPTUNA_TRIALS.c.study_id == OPTUNA_STUDIES.c.study_id))
        .where(OPTUNA_STUDIES.c.study_name == name, sa.cast(OPTUNA_TRIALS.c.state, sa.String).in_(states), ~other_stage)
        .scalar_subquery()
    )


def _confirm_trials_of(name: str, *states: str) -> sa.Select:
    """``SELECT COUNT(*)`` of the study's confirmation repeats (stage "confirm") in ``states``."""
    import json

    confirm = sa.exists(
        sa.select(OPTUNA_TRIAL_USER_ATTRS.c.trial_id).where(
            OPTUNA_TRIAL_USER_ATTRS.c.trial_id == OPTUNA_TRIALS.c.trial_id,
            OPTUNA_TRIAL_USER_ATTRS.c.key == "stage",
            OPTUNA_TRIAL_USER_ATTRS.c.value_json == json.dumps("confirm"),
        )
    )
    return (
        sa.select(sa.func.count())
        .select_from(OPTUNA_TRIALS.join(OPTUNA_STUDIES, OPTUNA_TRIALS.c.study_id == OPTUNA_STUDIES.c.study_id))
        .where(OPTUNA_STUDIES.c.study_name == name, sa.cast(OPTUNA_TRIALS.c.state, sa.String).in_(states), confirm)
        .scalar_subquery()
    )


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
    return StudyOut(
        name=row.name,
        status=row.status,
        n_trials=row.n_trials,
        trials_finished=session.scalar(sa.select(_search_trials_of(row.name, "COMPLETE", "PRUNED"))) or 0,
        confirm_finished=session.scalar(sa.select(_confirm_trials_of(row.name, "COMPLETE"))) or 0,
        counts=counts,
        confirm_trials=row.confirm_trials or 0,
        best=None if best is None else _best_summary(best),
        error=row.error,
        spec=StudySpec.model_validate(row.spec),
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
        params=trial.params,
        value=trial.value if trial.state.name == "COMPLETE" else None,
        intermediate_values=dict(trial.intermediate_values),
        history=attrs.get("history", []),
        duration_s=None if start is None or end is None else (end - start).total_seconds(),
        datetime_start=_utc(start),
        datetime_complete=_utc(end),
        retry_of=retry_of(trial),
        fail_reason=attrs.get("fail_reason"),
        worker=attrs.get("worker"),
        stage=attrs.get("stage"),
        confirms=attrs.get("confirms"),
        repeat=attrs.get("repeat"),
    )


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """Optuna stores naive local times; the API answers in UTC like everything else."""
    return None if value is None else value.astimezone(dt.timezone.utc)
