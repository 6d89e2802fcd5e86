"""Coordination in SQL: the conditional UPDATEs that keep the study's invariants, whatever the number of workers.

Every move is one conditional ``UPDATE`` of the study's row (:func:`_update`): whichever worker's
statement matches makes the move, the others change nothing. The invariants, one condition each:

* **slots**: no more than ``n_trials`` (plus ``confirm_trials`` once the confirmation stage is
  planned) slots are held at once (:func:`claim_slot`, :func:`release_slot`, :func:`reclaim_leaked_slots`);
  no search slot is claimed once the search has ended (:func:`end_search`: a budget or a stopping rule);
* **statuses**: queued -> running -> (confirming ->) completed, or stopped / failed
  (:func:`claim_slot`, :func:`stop`, :func:`record_failure`, :func:`end_search`, :func:`begin_confirmation`,
  :func:`open_confirmation`, :func:`complete_if_done`); back to running only by an edit that resumes an
  ended search (:func:`resume_search`, PATCH);
* **leaders**: the best-config history gains a row when the leader changes, under the study's row lock
  (:func:`record_leader`).

Each final status (completed, failed, stopped) and each new leader is also written to the webhooks' outbox
(:func:`service.webhooks.emit`) in the transaction of the UPDATE that made it, by the one caller that did.

Counts of Optuna's trials inside these conditions come from :mod:`service._rdb`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service import _rdb
from service.confirmation import ConfirmSpec, summarize
from service.db import session_scope
from service.models import ACTIVE_STATUSES, BestConfigRecord, SearchEnd, SearchStudy, StudyStatus, TrialStage, WebhookEvent, iso_utc, utc_now
from service.webhooks import emit

__all__ = [
    "announce_end",
    "begin_confirmation",
    "best_record",
    "claim_slot",
    "complete_if_done",
    "end_search",
    "Lifecycle",
    "lifecycle",
    "has_waiting_trials",
    "open_confirmation",
    "reclaim_leaked_slots",
    "record_failure",
    "record_leader",
    "release_creation_slots",
    "release_slot",
    "resume_confirmation",
    "resume_search",
    "edit_search",
    "runnable_studies",
    "stop",
    "studies_with_running_trials",
]

_SEARCHING = (StudyStatus.QUEUED.value, StudyStatus.RUNNING.value)

#: The search slots held: ``claimed`` less the confirmation's (a resumed study holds both), never below 0.
_SEARCH_HELD = sa.case((SearchStudy.claimed > SearchStudy.confirm_trials, SearchStudy.claimed - SearchStudy.confirm_trials), else_=0)


def _conditional(session: Session, study_id: int, *conditions: Any, returning: Any = None, **values: Any) -> Any:
    """``UPDATE regsearch_studies SET values WHERE id = study_id AND conditions``: True when it matched (or the
    ``returning`` column's value, None when it did not)."""
    statement = (
        sa.update(SearchStudy).where(SearchStudy.id == study_id, *conditions).values(**values)
        .execution_options(synchronize_session=False)
    )
    if returning is not None:
        return session.execute(statement.returning(returning)).scalar_one_or_none()
    return session.execute(statement).rowcount == 1


def _update(factory: sessionmaker[Session], study_id: int, *conditions: Any, returning: Any = None, **values: Any) -> Any:
    """:func:`_conditional` in its own transaction: the one helper behind every move of this module."""
    with session_scope(factory) as session:
        return _conditional(session, study_id, *conditions, returning=returning, **values)


# -- slots -----------------------------------------------------------------------------------------


def claim_slot(factory: sessionmaker[Session], study_id: int) -> int | None:
    """Atomically take one of the study's ``n_trials`` slots (``n_trials + confirm_trials`` once its
    confirmation stage is planned); return its serial number, or None if full.

    A single conditional ``UPDATE ... RETURNING`` (one round trip, one commit): whichever the number
    of workers and the database, no more than ``n_trials`` slots are ever held at once.
    """
    now = utc_now()
    return _update(
        factory, study_id,
        SearchStudy.claimed < SearchStudy.n_trials + SearchStudy.confirm_trials,
        SearchStudy.status.in_(ACTIVE_STATUSES),
        # the search until it has ended; the confirmation once its plan is open
        sa.or_(SearchStudy.search_ended_by.is_(None), sa.and_(SearchStudy.status == StudyStatus.CONFIRMING.value, SearchStudy.confirm_open)),
        returning=SearchStudy.claims_total,
        claimed=SearchStudy.claimed + 1,
        claims_total=SearchStudy.claims_total + 1,
        # queued -> running; a confirming study stays confirming
        status=sa.case((SearchStudy.status == StudyStatus.QUEUED.value, StudyStatus.RUNNING.value), else_=SearchStudy.status),
        started_at=sa.func.coalesce(SearchStudy.started_at, now),
        last_claim_at=now,
    )


def release_slot(factory: sessionmaker[Session], study_id: int) -> None:
    """Give a slot back (its trial failed): the retry, or a fresh trial, takes it."""
    _update(factory, study_id, SearchStudy.claimed > 0, claimed=SearchStudy.claimed - 1)


def release_creation_slots(factory: sessionmaker[Session], study_id: int) -> None:
    """A new study's Optuna study is set up: give back the slots its row was inserted holding."""
    _update(factory, study_id, SearchStudy.claims_total == 0, claimed=0, last_claim_at=None)


def reclaim_leaked_slots(factory: sessionmaker[Session], study_id: int, name: str, grace_period_s: float) -> bool:
    """Give back slots that no trial holds (their worker died); return True if any was reclaimed.

    A slot is held by a COMPLETE, PRUNED or RUNNING trial (a failed trial's slot is given back by
    whoever failed it; a WAITING retry takes a slot only when a worker claims one for it). A worker
    killed after claiming but before its trial existed, or after failing a trial but before giving
    its slot back, leaves ``claimed`` above that count forever, and a full study would never
    complete. This one conditional UPDATE resets ``claimed`` to the count, but only once the study
    has been quiet for the grace period: no claim and no trial finished within it, so no live worker
    can be between claiming a slot and creating its trial, nor between failing a trial and giving its
    slot back. (No read before the write: on SQLite a read transaction that turns into a write can
    fail outright under WAL.)
    """
    cutoff = dt.timedelta(seconds=grace_period_s)
    in_use = _slots_in_use(name)
    return _update(
        factory, study_id,
        SearchStudy.status.in_(ACTIVE_STATUSES),
        SearchStudy.claimed > in_use,
        sa.or_(SearchStudy.last_claim_at.is_(None), SearchStudy.last_claim_at < utc_now() - cutoff),
        ~_rdb.finished_since(name, cutoff),
        claimed=in_use,
    )


# -- statuses --------------------------------------------------------------------------------------


def announce_end(session: Session, study_id: int, status: StudyStatus, finished_at: dt.datetime, **data: Any) -> None:
    """The outbox's record of a final status, in the transaction of the caller's UPDATE that just made it."""
    emit(session, study_id, WebhookEvent(status.value), {"status": status.value, "finished_at": iso_utc(finished_at), **data})


def stop(session: Session, study_id: int) -> bool:
    """Mark an active study stopped (workers stop its running trials within one epoch)."""
    now = utc_now()
    if not _conditional(session, study_id, SearchStudy.status.in_(ACTIVE_STATUSES), status=StudyStatus.STOPPED, finished_at=now):
        return False
    announce_end(session, study_id, StudyStatus.STOPPED, now)
    return True


def record_failure(factory: sessionmaker[Session], study_id: int, message: str, max_failed_trials: int) -> bool:
    """Count a trial whose training raised; mark the study failed after too many. Return True if it did."""
    with session_scope(factory) as session:
        _conditional(session, study_id, failed_trials=SearchStudy.failed_trials + 1, error=message[:2000])
        now = utc_now()
        if not _conditional(session, study_id, SearchStudy.failed_trials >= max_failed_trials, SearchStudy.status.in_(ACTIVE_STATUSES),
                            status=StudyStatus.FAILED, finished_at=now):
            return False
        announce_end(session, study_id, StudyStatus.FAILED, now, error=message[:2000])
        return True


def _slots_in_use(name: str) -> sa.ScalarSelect:
    """The slots the study's trials hold: its finished or running search trials and confirmation repeats."""
    return _rdb.count(name, "COMPLETE", "PRUNED", "RUNNING", where=_rdb.holds_slot())


def _search_done(name: str) -> sa.ColumnElement[bool]:
    """The search's ``n_trials`` have finished (complete or pruned), or it was ended (:func:`end_search`) and every
    slot held has its trial, and no trial runs. (A worker that claimed a slot just before the end has no trial yet:
    it records one, pruned untrained, which ``n_trials`` counts; moving on without it left the study short of its
    ``n_trials``. A slot whose worker died is given back by :func:`reclaim_leaked_slots`.)"""
    return sa.and_(
        sa.or_(
            sa.and_(SearchStudy.search_ended_by.is_not(None), _slots_in_use(name) >= SearchStudy.claimed),
            sa.and_(SearchStudy.claimed >= SearchStudy.n_trials,
                    _rdb.count(name, "COMPLETE", "PRUNED", where=_rdb.search_trial()) >= SearchStudy.n_trials),
        ),
        _rdb.count(name, "RUNNING") == 0,
    )


#: ``search_ended_by`` once the search is over: the rule that ended it early, else its n_trials.
_ENDED_BY = sa.func.coalesce(SearchStudy.search_ended_by, SearchEnd.N_TRIALS.value)


def end_search(factory: sessionmaker[Session], study_id: int, reason: SearchEnd) -> bool:
    """End a study's search now (a budget ran out, a stopping rule held, PATCH lowered n_trials); True for the one
    caller that did.

    ``n_trials`` is capped at the search slots already taken and ``search_ended_by`` records ``reason``, so no
    search slot is claimed again; the trials that run end at their current epoch, pruned with the epochs they
    reported (:class:`service.objective.Objective`), and once none runs the study moves on as if its n_trials
    had finished (:func:`begin_confirmation`, :func:`complete_if_done`).
    """
    return _update(
        factory, study_id, SearchStudy.status.in_(_SEARCHING), SearchStudy.search_ended_by.is_(None),
        search_ended_by=reason.value,
        n_trials=sa.case((_SEARCH_HELD < SearchStudy.n_trials, _SEARCH_HELD), else_=SearchStudy.n_trials),
    )


def edit_search(session: Session, study_id: int, status: str, ended: bool, **values: Any) -> bool:
    """PATCH's write when it resumes nothing: ``values`` (spec, budgets, a new ``n_trials``), if the study is still in
    ``status`` with its search still ``ended`` or not (else the caller decides again)."""
    ended = SearchStudy.search_ended_by.is_not(None) if ended else SearchStudy.search_ended_by.is_(None)
    if "n_trials" in values:  # never below the search slots taken (the CHECK constraint holds too)
        values["n_trials"] = sa.case((_SEARCH_HELD > values["n_trials"], _SEARCH_HELD), else_=values["n_trials"])
    return _conditional(session, study_id, SearchStudy.status == status, ended, **values)


def resume_search(session: Session, study_id: int, status: str, n_trials: int, **values: Any) -> bool:
    """Resume an ended search (PATCH raised n_trials or a spent budget): running again with ``n_trials`` search
    trials, if the study is still in ``status`` with its search ended; its confirmation runs again after."""
    return _conditional(
        session, study_id, SearchStudy.status == status, SearchStudy.search_ended_by.is_not(None),
        _SEARCH_HELD <= n_trials,
        SearchStudy.confirm_open,  # not while a confirmation plan is half enqueued (its repeats would take search slots)
        status=StudyStatus.RUNNING, search_ended_by=None, n_trials=n_trials, finished_at=None, **values,
    )


def complete_if_done(factory: sessionmaker[Session], study_id: int, name: str, n_trials: int, *, confirm: bool = False) -> bool:
    """Mark the study completed once it is done; return True if this call did.

    Done: with ``confirm`` false (confirmation off), the search is done (:func:`_search_done`); with it
    on, the confirmation stage's plan was enqueued and opened (``confirm_open``, see
    :func:`service.stages.advance`) and no trial runs or waits (every repeat finished, or failed out of
    retries). ``claimed >= n_trials`` is implied (every finished trial holds a slot) and
    cheap, so the trial counts are only evaluated near the end.
    """
    confirmation_done = sa.and_(
        SearchStudy.status == StudyStatus.CONFIRMING.value,
        SearchStudy.confirm_open,
        _rdb.count(name, "RUNNING") == 0,
        _rdb.count(name, "WAITING") == 0,
    )
    done = confirmation_done if confirm else sa.or_(sa.and_(SearchStudy.status.in_(_SEARCHING), _search_done(name)), confirmation_done)
    return _complete(factory, study_id, done, search_ended_by=_ENDED_BY)


def _complete(factory: sessionmaker[Session], study_id: int, *conditions: Any, **values: Any) -> bool:
    """Mark the study completed if ``conditions`` hold (setting ``values`` too), and tell the webhooks; True if
    this call did.

    The event carries no best: another worker may record the last trial's leader just after this (its trial is
    complete in Optuna before its ``record_leader``), and that leader comes as its own ``new_best`` event."""
    now = utc_now()
    with session_scope(factory) as session:
        if not _conditional(session, study_id, *conditions, status=StudyStatus.COMPLETED, finished_at=now, **values):
            return False
        announce_end(session, study_id, StudyStatus.COMPLETED, now)
        return True


def begin_confirmation(factory: sessionmaker[Session], study_id: int, name: str) -> bool:
    """Move a study whose search is done from running to confirming; True for the one caller that did.

    ``confirm_open`` is false, so no slot can be claimed until :func:`open_confirmation` (the caller
    enqueues the plan first). ``last_claim_at`` marks the move for :func:`resume_confirmation`.
    """
    return _update(factory, study_id, SearchStudy.status.in_(_SEARCHING), _search_done(name),
                   status=StudyStatus.CONFIRMING, confirm_open=False, last_claim_at=utc_now(), search_ended_by=_ENDED_BY)


def resume_confirmation(factory: sessionmaker[Session], study_id: int, grace_period_s: float) -> bool:
    """Take over enqueueing a plan whose worker died half-way (confirming, no slot opened, quiet for the
    grace period); True for the one caller that did (it enqueues what is missing, then opens the slots)."""
    now = utc_now()
    return _update(
        factory, study_id,
        SearchStudy.status == StudyStatus.CONFIRMING.value,
        ~SearchStudy.confirm_open,
        sa.or_(SearchStudy.last_claim_at.is_(None), SearchStudy.last_claim_at < now - dt.timedelta(seconds=grace_period_s)),
        last_claim_at=now,
    )


def open_confirmation(factory: sessionmaker[Session], study_id: int, name: str, planned: int) -> None:
    """The plan is enqueued: open its slots, ``planned`` repeats waiting to run (none: the study completes).

    ``confirm_trials`` becomes the study's repeats that hold or will hold a slot (every repeat but failed ones,
    whose slots were given back): the plan's size the first time, the earlier plans' repeats plus the new ones
    when a resumed search confirms again.
    """
    opened = (SearchStudy.status == StudyStatus.CONFIRMING.value, ~SearchStudy.confirm_open)
    if not planned:
        _complete(factory, study_id, *opened, confirm_open=True)
        return
    repeats = _rdb.count(name, "COMPLETE", "PRUNED", "RUNNING", "WAITING", where=_rdb.has_stage(TrialStage.CONFIRM))
    held = SearchStudy.claimed - SearchStudy.n_trials  # never fewer slots than the study holds
    _update(factory, study_id, *opened, confirm_open=True, confirm_trials=sa.case((repeats > held, repeats), else_=held))


# -- leaders ---------------------------------------------------------------------------------------


def best_record(session: Session, study_id: int) -> BestConfigRecord | None:
    """The current best: the study's last best-config row (see :class:`BestConfigRecord`)."""
    return session.scalar(
        sa.select(BestConfigRecord).where(BestConfigRecord.study_id == study_id).order_by(BestConfigRecord.id.desc()).limit(1)
    )


def record_leader(
    factory: sessionmaker[Session], study_id: int, read_trials: Callable[[], Iterable[Any]], confirm: ConfirmSpec
) -> bool:
    """Bring the best-config history up to date after a trial completed; True when the leader changed.

    Under the study's row lock (an UPDATE that changes nothing), ``read_trials()`` (the Optuna study's
    trials, read after the lock is taken so that the last writer saw every finished run) is summarized
    by :func:`service.confirmation.summarize`. A new row is appended when the leader (the config of the
    highest mean; during the search, the highest single value, ties to the lower trial number:
    :func:`service.confirmation.search_rank`) differs from the last row's; otherwise the last row's value (the mean) and summary are updated.
    """
    with session_scope(factory) as session:
        if not _conditional(session, study_id, id=SearchStudy.id):  # the row lock; False once deleted
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
        emit(session, study_id, WebhookEvent.NEW_BEST, {"trial_number": best.trial_number, "value": float(best.mean),
                                                         "params": dict(best.params)})
        return True


# -- what the workers read -------------------------------------------------------------------------


class Lifecycle(NamedTuple):
    """What a worker checks each epoch: the status, whether the search has ended, and the budgets with what the
    search has spent of its trial-hours (``search_trial_hours``, read only when ``max_trial_hours`` is set)."""

    status: StudyStatus
    search_ended_by: str | None
    started_at: dt.datetime | None
    max_runtime_s: float | None
    max_trial_hours: float | None
    search_trial_hours: float


def _search_trial_hours() -> sa.ColumnElement[float]:
    """The search trials' summed hours up to now, in the lifecycle's query: a correlated subquery evaluated only for a
    study still searching, started, with a ``max_trial_hours`` (what :func:`service.stages.check_search` looks at;
    SQL's CASE evaluates the branch it takes, and no other: confirmation repeats never pay for the sum)."""
    budgeted = sa.and_(SearchStudy.max_trial_hours.is_not(None), SearchStudy.started_at.is_not(None),
                       SearchStudy.search_ended_by.is_(None), SearchStudy.status.in_(_SEARCHING))
    return sa.case((budgeted, _rdb.search_seconds(SearchStudy.name) / 3600.0), else_=0.0)


def lifecycle(factory: sessionmaker[Session], study_id: int) -> Lifecycle | None:
    """The study's :class:`Lifecycle` now (one query, its trial-hours included), or None once it has been deleted."""
    with factory() as session:
        found = session.execute(sa.select(
            SearchStudy.status, SearchStudy.search_ended_by, SearchStudy.started_at, SearchStudy.max_runtime_s,
            SearchStudy.max_trial_hours, _search_trial_hours()).where(SearchStudy.id == study_id)).first()
    return None if found is None else Lifecycle(StudyStatus(found[0]), *found[1:5], float(found[5] or 0.0))


def runnable_studies(session: Session) -> list[SearchStudy]:
    """Active studies, least-served first (so studies submitted side by side share the workers)."""
    return list(session.scalars(
        sa.select(SearchStudy).where(SearchStudy.status.in_(ACTIVE_STATUSES)).order_by(SearchStudy.claimed, SearchStudy.id)
    ))


def has_waiting_trials(session: Session, name: str) -> bool:
    """Whether the study has a trial queued to run (a confirmation repeat, or a retry)."""
    return bool(session.scalar(sa.select(_rdb.count(name, "WAITING"))))


def studies_with_running_trials(
    session: Session, statuses: tuple[StudyStatus, ...] = (StudyStatus.STOPPED, StudyStatus.FAILED)
) -> list[SearchStudy]:
    """Studies in ``statuses`` that still have RUNNING trials (left by a dead worker, or still ending)."""
    return list(session.scalars(
        sa.select(SearchStudy).where(SearchStudy.status.in_(statuses), _rdb.has_running_trials(SearchStudy.name))
    ))
