"""Optuna's schema, owned here and nowhere else (as Optuna keeps its own inside ``storages/_rdb/``).

The service reads Optuna's tables in SQL where loading every trial through the storage would cost too
much (counts inside a conditional UPDATE, the API's views, the metrics), and writes two rows beside
Optuna's retry callback (:func:`claim_settlement`, :func:`record_fail_reason`). Everything that
depends on how Optuna stores a study lives in this module:

* the table views (:data:`STUDIES`, :data:`TRIALS`, the attribute tables, ...) and the state names;
* :func:`of_study`, the one trials-of-a-study query every count and lookup is built on;
* the SQL rules on trial stages (:func:`search_trial`, :func:`has_stage`, :func:`holds_slot`);
* trial creation and the taking of a queued trial, each exactly once even when a dropped connection cuts
  its commit (:class:`IdempotentTrialCreation`, :func:`take_waiting`);
* a trial's duration in SQL (:class:`seconds_between`, each dialect's once) and the summed trial seconds;
* the settle writes, the unsettled-failure and orphan queries of the sweeps, the metrics' queries;
* the private attributes of Optuna's objects (:func:`trial_id`, :func:`study_id`, :func:`storage_of`,
  :func:`artifact_path`) and the one filter of Optuna's ``ExperimentalWarning`` (:func:`quiet`);
* the worker role's privileges on Optuna's tables (:data:`WORKER_PRIVILEGES`).

``tests/service/test_service_layers.py`` fails when Optuna's table names or private attributes appear outside this module.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import uuid
import warnings
from collections.abc import Collection, Iterator
from typing import Any

import optuna
import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.functions import FunctionElement

from service.models import SEARCH_STAGES, STAGE_ATTR, TrialStage

__all__ = [
    "CREATION_ATTR",
    "FINISHED_STATES",
    "SETTLED",
    "STUDIES",
    "TRIALS",
    "TRIAL_STATES",
    "WORKER_PRIVILEGES",
    "IdempotentTrialCreation",
    "artifact_path",
    "claim_settlement",
    "count",
    "finished_since",
    "has_running_trials",
    "has_stage",
    "has_user_attr",
    "holds_slot",
    "of_study",
    "optuna_study_id",
    "orphaned_trials",
    "quiet",
    "record_fail_reason",
    "reference_trials",
    "search_seconds",
    "search_trial",
    "stale_trial_callback",
    "state_counts",
    "state_name",
    "storage_of",
    "study_id",
    "study_system_attrs",
    "take_waiting",
    "trial_id",
    "trial_seconds",
    "waiting_trials",
    "trial_system_attr",
    "unsettled_failures",
]

# -- table views (only the columns the service reads) -------------------------------------------------

STUDIES = sa.table("studies", sa.column("study_id"), sa.column("study_name"))
TRIALS = sa.table(
    "trials", sa.column("trial_id"), sa.column("number"), sa.column("study_id"), sa.column("state"),
    sa.column("datetime_start", sa.DateTime), sa.column("datetime_complete", sa.DateTime),  # naive local time
)
TRIAL_USER_ATTRS = sa.table(
    "trial_user_attributes", sa.column("trial_user_attribute_id"), sa.column("trial_id"), sa.column("key"), sa.column("value_json")
)
TRIAL_SYSTEM_ATTRS = sa.table("trial_system_attributes", sa.column("trial_id"), sa.column("key"), sa.column("value_json"))
TRIAL_PARAMS = sa.table("trial_params", sa.column("trial_id"), sa.column("param_name"))
TRIAL_VALUES = sa.table("trial_values", sa.column("trial_id"), sa.column("objective"), sa.column("value", sa.Float))
TRIAL_HEARTBEATS = sa.table("trial_heartbeats", sa.column("trial_id"), sa.column("heartbeat", sa.DateTime))
STUDY_SYSTEM_ATTRS = sa.table("study_system_attributes", sa.column("study_id"), sa.column("key"), sa.column("value_json"))

_RUN_TRIALS = ("SELECT", "INSERT", "UPDATE")  # Optuna writes trials and never deletes during one
#: Optuna's table -> the privileges of the worker role on it (merged into :mod:`service.migrations.roles`).
WORKER_PRIVILEGES: dict[str, tuple[str, ...]] = {
    # Optuna's study tables: read. Creating a trial locks the study row (SELECT ... FOR UPDATE), for
    # which PostgreSQL asks UPDATE on one column: the key, which nothing ever changes.
    "studies": ("SELECT", "UPDATE (study_id)"),
    "study_directions": ("SELECT",),
    "study_user_attributes": ("SELECT",),
    "study_system_attributes": _RUN_TRIALS,
    "version_info": ("SELECT",),
    "alembic_version": ("SELECT",),
    # Optuna's trial tables: a worker runs trials.
    "trials": _RUN_TRIALS,
    "trial_params": _RUN_TRIALS,
    "trial_values": _RUN_TRIALS,
    "trial_intermediate_values": _RUN_TRIALS,
    "trial_user_attributes": _RUN_TRIALS,
    "trial_system_attributes": _RUN_TRIALS,
    "trial_heartbeats": _RUN_TRIALS,
}

# -- state names -----------------------------------------------------------------------------------

#: Optuna's trial states, as the API names them (``TrialOut.state`` and the fields of ``TrialCounts``).
TRIAL_STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}
FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")


def state_name(value: object) -> str:
    """Optuna's state as stored (``COMPLETE``; some drivers hand back ``TrialState.COMPLETE``)."""
    return str(value).rsplit(".", 1)[-1]


def _state() -> sa.ColumnElement:
    return sa.cast(TRIALS.c.state, sa.String)


# -- the trials of a study -------------------------------------------------------------------------


def of_study(query: sa.Select, name: Any, *states: str) -> sa.Select:
    """``query`` over the trials of the study named ``name`` (a value or a column), in ``states`` if given.

    The one trials-studies join: every count and lookup below (and the coordination's conditions) is built on it.
    """
    query = query.select_from(TRIALS.join(STUDIES, TRIALS.c.study_id == STUDIES.c.study_id)).where(STUDIES.c.study_name == name)
    return query.where(_state().in_(states)) if states else query


def search_trial(trial_id: Any = TRIALS.c.trial_id) -> sa.ColumnElement[bool]:
    """SQL twin of :func:`service.trials.is_search_trial`: no ``stage`` outside :data:`~service.models.SEARCH_STAGES`."""
    other_stage = sa.select(TRIAL_USER_ATTRS.c.trial_user_attribute_id).where(
        TRIAL_USER_ATTRS.c.trial_id == trial_id,
        TRIAL_USER_ATTRS.c.key == STAGE_ATTR,
        TRIAL_USER_ATTRS.c.value_json.not_in([json.dumps(stage) for stage in SEARCH_STAGES]),
    )
    return ~sa.exists(other_stage)


def has_user_attr(key: str, value: Any, trial_id: Any = TRIALS.c.trial_id) -> sa.ColumnElement[bool]:
    """The trial has the user attribute ``key`` equal to ``value`` (e.g. ``fail_reason == "stopped"``)."""
    return sa.exists(
        sa.select(TRIAL_USER_ATTRS.c.trial_user_attribute_id).where(
            TRIAL_USER_ATTRS.c.trial_id == trial_id,
            TRIAL_USER_ATTRS.c.key == key,
            TRIAL_USER_ATTRS.c.value_json == json.dumps(value),
        )
    )


def has_stage(*stages: str, trial_id: Any = TRIALS.c.trial_id) -> sa.ColumnElement[bool]:
    """The trial has a ``stage`` user attribute among ``stages``."""
    return sa.exists(
        sa.select(TRIAL_USER_ATTRS.c.trial_user_attribute_id).where(
            TRIAL_USER_ATTRS.c.trial_id == trial_id,
            TRIAL_USER_ATTRS.c.key == STAGE_ATTR,
            TRIAL_USER_ATTRS.c.value_json.in_([json.dumps(stage) for stage in stages]),
        )
    )


def holds_slot() -> sa.ColumnElement[bool]:
    """A search trial or a confirmation repeat (both run in the study's slots; warm-start copies do not)."""
    return sa.or_(search_trial(), has_stage(TrialStage.CONFIRM))


def count(name: Any, *states: str, where: sa.ColumnElement[bool] | None = None) -> sa.ScalarSelect:
    """``COUNT(*)`` of the study's trials in ``states`` (and ``where``), as a scalar subquery."""
    query = of_study(sa.select(sa.func.count()), name, *states)
    return (query if where is None else query.where(where)).scalar_subquery()


def finished_since(name: Any, cutoff: dt.timedelta) -> sa.ColumnElement[bool]:
    """A trial of the study finished within ``cutoff`` (Optuna's naive local time)."""
    return sa.exists(of_study(sa.select(TRIALS.c.trial_id), name).where(TRIALS.c.datetime_complete > dt.datetime.now() - cutoff))


def has_running_trials(name: Any) -> sa.ColumnElement[bool]:
    return sa.exists(of_study(sa.select(TRIALS.c.trial_id), name, "RUNNING"))


def state_counts(session: Session, name: str, where: sa.ColumnElement[bool] | None = None) -> dict[str, int]:
    """Number of the study's trials (those ``where`` selects) per state name (``COMPLETE``, ...)."""
    query = of_study(sa.select(_state(), sa.func.count()), name).group_by(_state())
    rows = session.execute(query if where is None else query.where(where)).all()
    return {state_name(state): int(number) for state, number in rows}


def optuna_study_id(session: Session, name: str) -> int | None:
    return session.scalar(sa.select(STUDIES.c.study_id).where(STUDIES.c.study_name == name))


def study_system_attrs(session: Session, name: str, *keys: str) -> dict[str, Any]:
    rows = session.execute(
        sa.select(STUDY_SYSTEM_ATTRS.c.key, STUDY_SYSTEM_ATTRS.c.value_json)
        .select_from(STUDY_SYSTEM_ATTRS.join(STUDIES, STUDY_SYSTEM_ATTRS.c.study_id == STUDIES.c.study_id))
        .where(STUDIES.c.study_name == name, STUDY_SYSTEM_ATTRS.c.key.in_(keys))
    ).all()
    return {key: json.loads(value) for key, value in rows}


def trial_system_attr(session: Session, name: str, number: int, key: str) -> Any:
    """A system attribute of the study's trial ``number`` (None if unset)."""
    value = session.scalar(
        of_study(sa.select(TRIAL_SYSTEM_ATTRS.c.value_json), name)
        .join(TRIAL_SYSTEM_ATTRS, TRIAL_SYSTEM_ATTRS.c.trial_id == TRIALS.c.trial_id)
        .where(TRIALS.c.number == number, TRIAL_SYSTEM_ATTRS.c.key == key)
    )
    return None if value is None else json.loads(value)


def reference_trials(session: Session, name: str) -> list[tuple[int, float]]:
    """``(number, value)`` of the study's COMPLETE reference trial(s) (stage "reference")."""
    query = (
        of_study(sa.select(TRIALS.c.number, TRIAL_VALUES.c.value), name, "COMPLETE")
        .join(TRIAL_VALUES, TRIAL_VALUES.c.trial_id == TRIALS.c.trial_id)
        .where(TRIAL_VALUES.c.objective == 0, has_stage(TrialStage.REFERENCE))
        .order_by(TRIALS.c.number)
    )
    return [(int(number), float(value)) for number, value in session.execute(query)]


# -- taking a queued trial ------------------------------------------------------------------------


def take_waiting(engine: sa.Engine, trial_id: int) -> bool:
    """Move a WAITING trial to RUNNING in one conditional ``UPDATE``; True for the one caller whose statement matched.

    Optuna's ``Study.ask`` pops a queued trial by reading it, then setting it RUNNING under ``SELECT ... FOR
    UPDATE``: a row lock on PostgreSQL, nothing on SQLite (two workers could both read WAITING and both run
    the trial). One statement is atomic on both: SQLite serializes writers (waiting up to its busy timeout),
    PostgreSQL re-checks the condition on the row it waited for. ``datetime_start`` is set as Optuna does.
    A commit cut by a dropped connection may have landed: the trial is then this caller's if it runs with
    exactly the start time this caller wrote (else the error is raised, and the trial is either still
    WAITING or another worker's, or, if even that read fails, an orphan for the sweeps).
    """
    started = dt.datetime.now()  # Optuna's naive local time; to the microsecond, this call's mark
    try:
        with engine.begin() as connection:
            taken = connection.execute(
                sa.update(TRIALS).where(TRIALS.c.trial_id == trial_id, _state() == "WAITING")
                .values(state="RUNNING", datetime_start=started)
            )
        return taken.rowcount == 1
    except sa.exc.DBAPIError:
        try:
            with engine.connect() as connection:
                row = connection.execute(sa.select(TRIALS.c.state, TRIALS.c.datetime_start).where(TRIALS.c.trial_id == trial_id)).first()
        except sa.exc.DBAPIError:
            row = None
        if row is not None and state_name(row.state) == "RUNNING" and _as_datetime(row.datetime_start) == started:
            return True
        raise


def _as_datetime(value: Any) -> Any:
    """A ``DateTime`` column's value as a datetime (SQLite's text, as the table views read it, parsed)."""
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


#: System attribute of a trial created by ``ask`` (not enqueued): a token drawn for its creation, written in the
#: transaction that creates it (see :class:`IdempotentTrialCreation`).
CREATION_ATTR = "regsearch:creation"


class IdempotentTrialCreation:
    """A mixin of Optuna's ``RDBStorage`` whose trial creation is idempotent: one ``ask``, one trial.

    Optuna retries a trial creation whose commit raised; but a commit cut by a dropped connection may
    have landed on the server, and the retry then creates a second trial while the first stays RUNNING
    with no worker (an orphan: no heartbeat, no params, until a sweep fails it). So each creation draws a
    token, and a fresh trial (not an enqueued one, which has a template) carries it in
    :data:`CREATION_ATTR`, written in the transaction that creates it; an attempt that finds the token
    (read under the study row lock Optuna takes first) returns that trial instead of adding another.

    It also tells which trial this thread's ``ask`` started (:meth:`started_trial`; the storage's taking of a
    queued trial calls :meth:`mark_started`): an ``ask`` that raised after its trial existed (its next read
    cut by a dropped connection) leaves that trial to its caller (:meth:`service.worker.Worker.fail_unrun`).
    """

    _creation = threading.local()  # this thread's creation token under way, and the trial its last ask started

    def _create_new_trial(self, study_id: int, template_trial: Any = None) -> Any:
        self._creation.token = uuid.uuid4().hex
        try:
            created = super()._create_new_trial(study_id, template_trial)
        finally:
            self._creation.token = None
        if template_trial is None:  # asked for; not a trial enqueued (by a retry callback, say) meanwhile
            self.mark_started(created._trial_id)
        return created

    def mark_started(self, trial_id: int | None) -> None:
        """Record (None: forget) the trial this thread's ``ask`` started."""
        self._creation.started = trial_id

    def started_trial(self) -> int | None:
        """The id of the trial this thread's ``ask`` created or took from the queue since ``mark_started(None)``."""
        return getattr(self._creation, "started", None)

    def _get_prepared_new_trial(self, study_id: int, template_trial: Any, session: Session) -> Any:
        token = getattr(self._creation, "token", None)
        if token is None or template_trial is not None:
            return super()._get_prepared_new_trial(study_id, template_trial, session)
        from optuna.storages._rdb.models import TrialModel

        attrs, value = TRIAL_SYSTEM_ATTRS, json.dumps(token)
        landed = session.scalar(sa.select(attrs.c.trial_id).where(attrs.c.key == CREATION_ATTR, attrs.c.value_json == value))
        if landed is not None:
            return session.get(TrialModel, landed)
        trial = super()._get_prepared_new_trial(study_id, template_trial, session)
        session.execute(sa.insert(attrs).values(trial_id=trial.trial_id, key=CREATION_ATTR, value_json=value))
        return trial


# -- the settle writes, beside Optuna's retry callback -------------------------------------------------

#: System attribute of a failed trial whose retry (or the decision not to retry) has been taken care of.
SETTLED = "regsearch:settled"


def claim_settlement(factory: sessionmaker[Session], trial_id: int, reason: str) -> bool:
    """Mark the failed trial settled; False if another caller already had (the row is unique per trial and key)."""
    try:
        with factory() as session, session.begin():
            session.execute(sa.insert(TRIAL_SYSTEM_ATTRS).values(trial_id=trial_id, key=SETTLED, value_json=json.dumps(reason)))
    except sa.exc.IntegrityError:
        return False
    return True


def record_fail_reason(factory: sessionmaker[Session], trial: optuna.trial.FrozenTrial, reason: str) -> None:
    """Set ``fail_reason`` on a trial Optuna has already failed.

    Optuna's storage refuses to change a finished trial, and its heartbeat check fails the trial
    before it calls back; so the attribute is written to Optuna's table directly, in its format, with
    the statements the worker's database role may run (UPDATE, else INSERT; never DELETE).
    """
    attrs, value, key = TRIAL_USER_ATTRS, json.dumps(reason), trial_id(trial)
    with factory() as session, session.begin():
        updated = session.execute(
            sa.update(attrs).where(attrs.c.trial_id == key, attrs.c.key == "fail_reason").values(value_json=value)
        ).rowcount
        if not updated:
            session.execute(sa.insert(attrs).values(trial_id=key, key="fail_reason", value_json=value))
    trial.user_attrs["fail_reason"] = reason


def unsettled_failures(session: Session, name: str, grace_period: float) -> set[int]:
    """Ids of the study's FAIL trials older than the grace period, with params (drawn or enqueued), never settled."""
    cutoff = dt.datetime.now() - dt.timedelta(seconds=grace_period)  # Optuna's naive local time
    trials, attrs = TRIALS, TRIAL_SYSTEM_ATTRS
    query = of_study(sa.select(trials.c.trial_id), name, "FAIL").where(
        trials.c.datetime_complete < cutoff,
        sa.or_(sa.exists().where(TRIAL_PARAMS.c.trial_id == trials.c.trial_id),
               sa.exists().where(attrs.c.trial_id == trials.c.trial_id, attrs.c.key == "fixed_params")),
        ~sa.exists().where(attrs.c.trial_id == trials.c.trial_id, attrs.c.key == SETTLED),
    )
    return set(session.scalars(query))


def orphaned_trials(session: Session, name: str, grace_period: float) -> list[int]:
    """Ids of the study's RUNNING trials older than the grace period with neither a heartbeat nor a param."""
    cutoff = dt.datetime.now() - dt.timedelta(seconds=grace_period)  # Optuna's naive local time
    query = of_study(sa.select(TRIALS.c.trial_id), name, "RUNNING").where(
        sa.or_(TRIALS.c.datetime_start.is_(None), TRIALS.c.datetime_start <= cutoff),
        ~sa.exists().where(TRIAL_HEARTBEATS.c.trial_id == TRIALS.c.trial_id),
        ~sa.exists().where(TRIAL_PARAMS.c.trial_id == TRIALS.c.trial_id),
    )
    return list(session.scalars(query))


# -- a trial's duration in SQL ----------------------------------------------------------------------


class seconds_between(FunctionElement):  # noqa: N801 - used like a SQL function
    """Seconds from ``start`` to ``end`` (two ``DateTime`` expressions), as a float. The SQL differs by dialect
    (SQLite has no interval type): each is written once, below, and SQLAlchemy picks it when compiling."""

    type = sa.Float()
    name = "seconds_between"
    inherit_cache = True


@compiles(seconds_between)
def _seconds_between(element: seconds_between, compiler: Any, **kw: Any) -> str:
    start, end = element.clauses
    return compiler.process(sa.extract("epoch", end - start), **kw)


@compiles(seconds_between, "sqlite")
def _seconds_between_sqlite(element: seconds_between, compiler: Any, **kw: Any) -> str:
    start, end = element.clauses
    return compiler.process((sa.func.julianday(end) - sa.func.julianday(start)) * 86400.0, **kw)


# -- the metrics' queries --------------------------------------------------------------------------


def trials_by_study_and_state(session: Session) -> list[tuple[str, str, int]]:
    """``(study name, state name, count)`` over every study."""
    query = sa.select(STUDIES.c.study_name, _state(), sa.func.count()).select_from(
        TRIALS.join(STUDIES, TRIALS.c.study_id == STUDIES.c.study_id)).group_by(STUDIES.c.study_name, _state())
    return [(study, state_name(state), int(number)) for study, state, number in session.execute(query)]


def trial_durations(session: Session) -> list[tuple[str, str, int, float]]:
    """``(study name, state name, count, total seconds)`` of the finished trials."""
    start, end = TRIALS.c.datetime_start, TRIALS.c.datetime_complete
    query = (
        sa.select(STUDIES.c.study_name, _state(), sa.func.count(), sa.func.coalesce(sa.func.sum(seconds_between(start, end)), 0.0))
        .select_from(TRIALS.join(STUDIES, TRIALS.c.study_id == STUDIES.c.study_id))
        .where(_state().in_(FINISHED_STATES), start.is_not(None), end.is_not(None))
        .group_by(STUDIES.c.study_name, _state())
    )
    return [(study, state_name(state), int(number), float(total)) for study, state, number, total in session.execute(query)]


def waiting_trials(session: Session, name: str, where: sa.ColumnElement[bool] | None = None) -> list[int]:
    """Ids of the study's WAITING trials (those ``where`` selects), oldest first."""
    query = of_study(sa.select(TRIALS.c.trial_id), name, "WAITING").order_by(TRIALS.c.trial_id)
    return list(session.scalars(query if where is None else query.where(where)))


def _seconds_so_far() -> sa.ColumnElement[float]:
    """A started trial's seconds: to its end, or for a running one up to now."""
    now = sa.literal(dt.datetime.now(), sa.DateTime)  # Optuna's naive local time
    return seconds_between(TRIALS.c.datetime_start, sa.func.coalesce(TRIALS.c.datetime_complete, now))


#: The trials whose durations count: those that started (their stage then tells search from confirmation; warm-start
#: copies, which ran elsewhere, are neither).
_STARTED = sa.and_(TRIALS.c.datetime_start.is_not(None), _state() != "WAITING")


def trial_seconds(session: Session, names: Collection[str] | None = None) -> dict[tuple[str, str], float]:
    """``{(study name, "search" | "confirm"): seconds}``: the summed durations of the trials that started (a
    running one up to now; warm-start copies left out), of the studies ``names`` (of every study when None; an
    empty collection reads nothing), in one query whatever their number."""
    if names is not None and not names:
        return {}
    stage = sa.case((has_stage(TrialStage.CONFIRM), "confirm"), (search_trial(), "search"), else_=None).label("stage")
    query = sa.select(STUDIES.c.study_name, stage, sa.func.coalesce(sa.func.sum(_seconds_so_far()), 0.0)).select_from(
        TRIALS.join(STUDIES, TRIALS.c.study_id == STUDIES.c.study_id)).where(_STARTED)
    if names is not None:
        query = query.where(STUDIES.c.study_name.in_(list(names)))
    rows = session.execute(query.group_by(STUDIES.c.study_name, stage)).all()
    return {(study, kind): max(0.0, float(total)) for study, kind, total in rows if kind is not None}


def search_seconds(name: Any) -> sa.ScalarSelect:
    """The search trials' part of :func:`trial_seconds` for the study named ``name`` (a value or a column), as a
    scalar subquery: a budget check folds it into the query it makes anyway."""
    query = of_study(sa.select(sa.func.coalesce(sa.func.sum(_seconds_so_far()), 0.0)), name).where(_STARTED, search_trial())
    return query.scalar_subquery()


def running_heartbeats(session: Session) -> list[tuple[str, int, str | None, dt.datetime]]:
    """``(study name, trial number, worker or None, last heartbeat)`` of every running trial with a heartbeat."""
    worker = TRIAL_USER_ATTRS.alias("worker_attr")
    query = (
        sa.select(STUDIES.c.study_name, TRIALS.c.number, worker.c.value_json, TRIAL_HEARTBEATS.c.heartbeat)
        .select_from(
            TRIALS.join(STUDIES, TRIALS.c.study_id == STUDIES.c.study_id)
            .join(TRIAL_HEARTBEATS, TRIAL_HEARTBEATS.c.trial_id == TRIALS.c.trial_id)
            .outerjoin(worker, sa.and_(worker.c.trial_id == TRIALS.c.trial_id, worker.c.key == "worker"))
        )
        .where(_state() == "RUNNING")
    )
    rows = []
    for study, number, worker_json, heartbeat in session.execute(query):
        rows.append((study, int(number), json.loads(worker_json) if worker_json else None, _as_datetime(heartbeat)))
    return rows


# -- Optuna's private attributes and experimental warnings -------------------------------------------


def trial_id(trial: Any) -> int:
    """The storage's id of a ``Trial`` or ``FrozenTrial`` (Optuna keeps it private)."""
    return trial._trial_id


def study_id(study: optuna.Study) -> int:
    return study._study_id


def storage_of(study: optuna.Study) -> Any:
    return study._storage


def stale_trial_callback(study: optuna.Study) -> Any:
    """The ``heartbeat_stale_trial_callback`` the study's storage was built with (None without heartbeats)."""
    return study._storage.get_heartbeat_stale_trial_callback()


#: Prefix of the system attributes ``optuna.artifacts.upload_artifact`` records (its ARTIFACTS_ATTR_PREFIX).
ARTIFACTS_ATTR_PREFIX = "artifacts:"


def artifact_path(store: Any, artifact_id: str) -> Any:
    """The file of ``artifact_id`` in a ``FileSystemArtifactStore``."""
    return store._get_filepath(artifact_id)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Optuna's ``ExperimentalWarning`` (heartbeats, retry callbacks, metric names, fANOVA): the one filter."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield
