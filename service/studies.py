"""Studies as the API creates and deletes them: one row per study name, its Optuna study set up with it.

Identical re-submissions return the existing row; a different spec under the same name is a
conflict. :func:`submit_study` sets up the Optuna study (the reference and the enqueued configs
queued, the warm-start trials added) while the row holds all its slots, so no worker samples a point
before those trials are queued. The invariants that workers race on live in
:mod:`service.coordination`; the API's answers are assembled in :mod:`service.views`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import optuna
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service import _rdb, coordination, features, stages, webhooks
from service._optuna import METRIC, open_study
from service.db import session_scope
from service.models import ACTIVE_STATUSES, ADMIN_OWNER, BestConfigRecord, SearchEnd, SearchStudy, StudyStatus, as_utc, utc_now
from service.schemas import StudySpec

__all__ = [
    "BudgetSpent",
    "StudyAlreadyEnded",
    "StudyConflict",
    "StudyNotEditable",
    "StudyNotFound",
    "delete_study",
    "edit_study",
    "get_study",
    "list_studies",
    "list_trash",
    "trashed_names",
    "purge_expired",
    "purge_study",
    "restore_study",
    "stop_study",
    "study_owners",
    "submit_study",
]


class StudyNotFound(LookupError):
    def __init__(self, name: str, where: str = "") -> None:
        shown = name if len(name) <= 80 else name[:80] + "..."  # a 404 never echoes a long path in full
        super().__init__(f"study {shown!r} not found{where}")
        self.name = name


class StudyAlreadyEnded(ValueError):
    def __init__(self, name: str, status: str) -> None:
        super().__init__(f"study {name!r} already {status}; nothing to stop")
        self.name = name


class StudyConflict(ValueError):
    def __init__(self, name: str, reason: str = "") -> None:
        super().__init__(
            f"a study named {name!r} already exists with a different spec; choose another name, or POST with ?replace=true"
            if not reason else f"a study named {name!r} already exists ({reason}); choose another name"
        )
        self.name = name


class StudyNotEditable(ValueError):
    """The study was stopped or failed (its search cannot be changed), or is moving between stages (try again)."""


class BudgetSpent(ValueError):
    """The edit would resume an ended search whose budget is spent."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _spec_dict(spec: StudySpec) -> dict[str, Any]:
    return spec.model_dump(mode="json")


def submit_study(
    factory: sessionmaker[Session], storage: Any, spec: StudySpec, *, replace: bool = False, artifact_store: Any = None,
    owner: str = ADMIN_OWNER,
) -> tuple[SearchStudy, bool]:
    """Create the study (and its Optuna study), owned by ``owner``; return ``(row, created)``.

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
    if existing is not None and replace and (existing.spec != wanted or existing.deleted_at is not None):
        purge_study(factory, storage, spec.name, artifact_store, trashed_only=False)  # the old study is gone for good
        existing = None
    if existing is not None and existing.deleted_at is not None:
        raise StudyConflict(spec.name, "it is in the trash: restore it, purge it, or POST with ?replace=true")
    if existing is not None:
        if _spec_dict(StudySpec.model_validate(existing.spec)) != wanted:  # defaults of fields added since filled in
            raise StudyConflict(spec.name)
        return existing, False
    warm_start = _warm_start(factory, storage, spec) if spec.warm_start_from else None
    row: SearchStudy | None = None
    created = False
    try:
        with session_scope(factory) as session:
            row = session.scalar(sa.select(SearchStudy).where(SearchStudy.name == spec.name))
            if row is None and _rdb.optuna_study_id(session, spec.name) is not None:
                # A concurrent creator commits its row before it creates the Optuna study: look again.
                row = session.scalar(sa.select(SearchStudy).where(SearchStudy.name == spec.name))
                if row is None:
                    raise StudyConflict(spec.name, "an Optuna study of that name exists outside the service; it is never adopted")
            if row is None:
                now = utc_now()
                row = SearchStudy(name=spec.name, spec=wanted, owner=owner, n_trials=spec.n_trials, status=StudyStatus.QUEUED,
                                  max_runtime_s=spec.max_runtime_s, max_trial_hours=spec.max_trial_hours,
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
        purge_study(factory, storage, spec.name, trashed_only=False)
        raise
    coordination.release_creation_slots(factory, row.id)
    row.claimed, row.last_claim_at = 0, None
    return row, True


def _set_up_optuna_study(storage: Any, spec: StudySpec, warm_start: features.WarmStart | None) -> None:
    """Create the Optuna study; queue the reference, then the enqueued configs; add the warm-start trials."""
    study = open_study(storage, spec)
    with _rdb.quiet():
        study.set_metric_names([METRIC])  # the dashboard's axis label
    study.set_user_attr("regsearch_spec", _spec_dict(spec))
    # -- issue 11: the reference first, then the user's configs, then another study's trials --
    if spec.reference:
        features.enqueue_reference(study, spec.search_space)
    features.enqueue_configs(study, spec.enqueue, spec.search_space)
    if warm_start is not None:
        study.add_trials(warm_start.trials)
        storage.set_study_system_attr(_rdb.study_id(study), features.WARM_START_ATTR, warm_start.summary.model_dump())


def get_study(session: Session, name: str) -> SearchStudy:
    """The study named ``name``; :class:`StudyNotFound` if there is none or it is in the trash."""
    row = session.scalar(sa.select(SearchStudy).where(SearchStudy.name == name, SearchStudy.deleted_at.is_(None)))
    if row is None:
        raise StudyNotFound(name)
    return row


def _owned_by(owner: str | None) -> Any:
    return sa.true() if owner is None else SearchStudy.owner == owner


def list_studies(session: Session, owner: str | None = None) -> list[SearchStudy]:
    """The studies (``owner``'s alone if given), oldest first; those in the trash are not listed (:func:`list_trash`)."""
    return list(session.scalars(
        sa.select(SearchStudy).where(SearchStudy.deleted_at.is_(None), _owned_by(owner))
        .order_by(SearchStudy.created_at, SearchStudy.id)))


def trashed_names(factory: sessionmaker[Session]) -> set[str]:
    """The names of the studies in the trash."""
    with factory() as session:
        return set(session.scalars(sa.select(SearchStudy.name).where(SearchStudy.deleted_at.is_not(None))))


def study_owners(factory: sessionmaker[Session]) -> dict[str, str]:
    """Every study's owner by name (the trash's included)."""
    with factory() as session:
        return dict(session.execute(sa.select(SearchStudy.name, SearchStudy.owner)).all())


def list_trash(session: Session, owner: str | None = None) -> list[SearchStudy]:
    """The deleted studies still in the trash (``owner``'s alone if given), most recently deleted first."""
    return list(session.scalars(
        sa.select(SearchStudy).where(SearchStudy.deleted_at.is_not(None), _owned_by(owner))
        .order_by(SearchStudy.deleted_at.desc(), SearchStudy.id)))


def stop_study(factory: sessionmaker[Session], name: str) -> SearchStudy:
    """Mark an active study stopped (workers stop its running trials within one epoch); idempotent.

    Raises :class:`StudyAlreadyEnded` for a study that already completed or failed.
    """
    with session_scope(factory) as session:
        row = get_study(session, name)
        coordination.stop(session, row.id)
        session.refresh(row)
    if row.status in (StudyStatus.COMPLETED, StudyStatus.FAILED):
        raise StudyAlreadyEnded(name, row.status)
    return row


def edit_study(factory: sessionmaker[Session], name: str, changes: dict[str, Any]) -> SearchStudy:
    """Change a study's ``n_trials`` and budgets (``changes``: the fields given, :data:`service.schemas.MUTABLE_FIELDS`).

    * A search that runs takes the new values (workers read them before each claim and after each epoch);
      ``n_trials`` below the search trials already started ends the search now (as a budget would).
    * A search that has ended (running trials finishing, confirming, completed) resumes when the study's
      ``n_trials`` now exceeds the trials it ran and no budget is spent: running again, then the confirmation
      stage runs again over the whole search (the repeats already run are kept). An edit that would resume it
      with a budget spent raises :class:`BudgetSpent`, naming the budget.
    * A stopped or failed study raises :class:`StudyNotEditable`.
    """
    for _attempt in range(5):  # a worker moved the study meanwhile: decide again on its new state
        with session_scope(factory) as session:
            row = get_study(session, name)
            if row.status in (StudyStatus.STOPPED, StudyStatus.FAILED):
                raise StudyNotEditable(f"study {name!r} is {row.status}; only a queued, running, confirming or completed study can be edited")
            spec = StudySpec.model_validate({**row.spec, **changes})  # each value validated as at submission
            budgets = {"max_runtime_s": spec.max_runtime_s, "max_trial_hours": spec.max_trial_hours}
            values = {"spec": _spec_dict(spec), **budgets}
            held = max(0, row.claimed - row.confirm_trials)
            if row.search_ended_by is None:
                # n_trials below the search slots held: edit_search keeps it at those, and the search ends (as a budget would)
                ended = {"search_ended_by": SearchEnd.N_TRIALS.value} if spec.n_trials < held else {}
                moved = coordination.edit_search(session, row.id, row.status, False, n_trials=spec.n_trials, **ended, **values)
            elif spec.n_trials > row.n_trials:
                used = stages.usage(session, row)
                spent = stages.budget_spent(row.started_at, spec.max_runtime_s, spec.max_trial_hours, used.trial_hours)
                if spent is not None:
                    # the runtime as budget_spent counts it: since the first trial started, up to now (not to the end)
                    runtime = (utc_now() - as_utc(row.started_at)).total_seconds()
                    amount = f"{runtime:.0f} s" if spent == SearchEnd.MAX_RUNTIME_S else f"{used.trial_hours:.4f} h"
                    raise BudgetSpent(spent.value, f"{spent.value} {budgets[spent.value]:g} is spent ({amount} used): raise it "
                                      "in the same edit to resume the search")
                moved = coordination.resume_search(session, row.id, row.status, spec.n_trials, **values)
            else:
                moved = coordination.edit_search(session, row.id, row.status, True, **values)
            if moved:
                session.flush()
                session.refresh(row)
                return row
    raise StudyNotEditable(f"study {name!r} is moving between stages (its confirmation plan is being enqueued); try the edit again")


def delete_study(factory: sessionmaker[Session], name: str) -> None:
    """Move the study to the trash: hidden from every list and lookup, its name still taken, everything
    kept (trials, best-config history, models) until :func:`restore_study` or :func:`purge_study`. An
    active study is stopped first (workers stop its running trials within one epoch)."""
    with session_scope(factory) as session:
        # Write first, read nothing: of concurrent deletes exactly one matches (the others 404).
        now = utc_now()
        stopped = session.execute(
            sa.update(SearchStudy).where(SearchStudy.name == name, SearchStudy.deleted_at.is_(None), SearchStudy.status.in_(ACTIVE_STATUSES))
            .values(status=StudyStatus.STOPPED, finished_at=now).returning(SearchStudy.id).execution_options(synchronize_session=False)
        ).scalar_one_or_none()
        if stopped is not None:
            coordination.announce_end(session, stopped, StudyStatus.STOPPED, now)
        trashed = session.execute(
            sa.update(SearchStudy).where(SearchStudy.name == name, SearchStudy.deleted_at.is_(None))
            .values(deleted_at=now,
                    status=sa.case((SearchStudy.status.in_(ACTIVE_STATUSES), StudyStatus.STOPPED.value), else_=SearchStudy.status),
                    finished_at=sa.func.coalesce(SearchStudy.finished_at, now))
            .execution_options(synchronize_session=False)
        ).rowcount
    if trashed != 1:
        raise StudyNotFound(name)


def restore_study(factory: sessionmaker[Session], name: str) -> SearchStudy:
    """Bring a study back from the trash, whole (a study that was running comes back stopped)."""
    with session_scope(factory) as session:
        restored = session.execute(
            sa.update(SearchStudy).where(SearchStudy.name == name, SearchStudy.deleted_at.is_not(None))
            .values(deleted_at=None).execution_options(synchronize_session=False)
        ).rowcount
        if restored != 1:
            raise StudyNotFound(name, " in the trash")
        return get_study(session, name)


def purge_expired(factory: sessionmaker[Session], storage: Any, artifact_store: Any, days: float) -> list[str]:
    """Purge the studies that have been in the trash longer than ``days``; return their names."""
    cutoff = utc_now() - dt.timedelta(days=days)
    with factory() as session:
        names = list(session.scalars(sa.select(SearchStudy.name).where(SearchStudy.deleted_at < cutoff)))
    for name in names:
        try:
            purge_study(factory, storage, name, artifact_store)
        except StudyNotFound:
            pass  # purged (or restored) meanwhile
    return names


def purge_study(factory: sessionmaker[Session], storage: Any, name: str, artifact_store: Any = None, *,
                trashed_only: bool = True) -> None:
    """Delete for good a study in the trash (any study with ``trashed_only=False``): its row, its best-config
    history, its Optuna study (trials included) and its stored models."""
    in_scope = sa.and_(SearchStudy.name == name, SearchStudy.deleted_at.is_not(None) if trashed_only else sa.true())
    with session_scope(factory) as session:
        # Write first, read nothing: of concurrent purges exactly one deletes the row (the others 404).
        session.execute(sa.delete(BestConfigRecord).where(
            BestConfigRecord.study_id.in_(sa.select(SearchStudy.id).where(in_scope))))
        webhooks.forget_studies(session, sa.select(SearchStudy.id).where(in_scope))
        if session.execute(sa.delete(SearchStudy).where(in_scope)).rowcount != 1:
            raise StudyNotFound(name, " in the trash" if trashed_only else "")
    try:
        if artifact_store is not None:
            features.remove_study_artifacts(optuna.load_study(study_name=name, storage=storage), artifact_store)
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:
        pass


def _warm_start(factory: sessionmaker[Session], storage: Any, spec: StudySpec) -> features.WarmStart:
    """The source study's trials ready for ``add_trials``; ``StudyNotFound`` (404) or ``IncompatibleStudy`` (422)."""
    name = spec.warm_start_from
    with factory() as session:
        source = session.scalar(sa.select(SearchStudy).where(SearchStudy.name == name, SearchStudy.deleted_at.is_(None)))
    if source is None:
        raise StudyNotFound(name)  # 404: the request is valid, the study it names does not exist
    try:
        trials = storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False)
    except KeyError:
        trials = []
    return features.warm_start_trials(
        trials, StudySpec.model_validate(source.spec), spec, source_name=name, max_gap=spec.max_gap
    )
