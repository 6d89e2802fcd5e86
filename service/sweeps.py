"""Sweeps: what a worker cleans up after others (dead workers, lost connections) so every study ends.

A worker sweeps a study whose slots are all taken (or any study, when it is idle):

* **stale trials**: a RUNNING trial whose worker stopped heart-beating for the grace period is
  failed by Optuna's own check, which calls the storage's
  :class:`~service.retries.RetryFailedTrial` (retry with the same params, slot given back);
* **orphaned trials**: a RUNNING trial with neither a heartbeat nor a param (its ``ask`` raised, and
  its worker could not fail it) is invisible to that check; it is marked failed here;
* **unsettled failures**: a failed trial whose retry was never queued (a connection dropped between
  Optuna failing it and calling back) is re-queued by :func:`service.retries.retry_unsettled_failures`;
* **leaked slots**: slots no trial holds (a worker killed between its claim and its trial) are given
  back once the study has been quiet for the grace period;
* **ended studies**: the trials that dead workers left RUNNING in stopped or failed studies are
  failed too (without a retry), so that nothing stays ``running`` forever;
* **expired trash** (idle workers): the studies deleted more than ``trash_days`` ago are purged for good,
  as the API purges them when it is called (:func:`service.studies.purge_expired`), so a server nobody
  calls still forgets them. A worker logged in as the least-privilege worker role may delete nothing
  (docs/kubernetes.md, "Database roles"): refused once, it leaves the purge to the API.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from service import _rdb, coordination, studies
from service.models import SearchStudy
from service.retries import ORPHANED, retry_unsettled_failures

__all__ = ["fail_orphaned_trials", "fail_stale_trials", "purge_expired_trash", "sweep_ended_studies", "sweep_study"]

log = logging.getLogger(__name__)
INSUFFICIENT_PRIVILEGE = "42501"  # PostgreSQL's SQLSTATE for a refused statement


def sweep_study(
    factory: sessionmaker[Session], storage: Any, study: optuna.Study, row: SearchStudy, grace_period: float
) -> None:
    """For an active study whose slots are all taken: fail trials of dead workers and reclaim leaked slots."""
    fail_stale_trials(factory, storage, study, row.name, grace_period)
    retry_unsettled_failures(factory, study, row.id, grace_period)  # before the reclaim: the retry then takes the slot
    if coordination.reclaim_leaked_slots(factory, row.id, row.name, grace_period):
        log.warning("study %s: gave back trial slot(s) whose worker died before its trial started", row.name)


def sweep_ended_studies(factory: sessionmaker[Session], storage: Any, grace_period: float) -> None:
    """Fail the trials that dead workers left RUNNING in stopped or failed studies (one query when none)."""
    with factory() as session:
        rows = coordination.studies_with_running_trials(session)
    for row in rows:
        try:
            study = optuna.load_study(study_name=row.name, storage=storage)
        except KeyError:
            continue
        fail_stale_trials(factory, storage, study, row.name, grace_period)


def fail_stale_trials(
    factory: sessionmaker[Session], storage: Any, study: optuna.Study, name: str, grace_period: float
) -> None:
    """Optuna's heartbeat check (its stale-trial callback retries them), then the orphans it cannot see."""
    with _rdb.quiet():
        optuna.storages.fail_stale_trials(study)
    fail_orphaned_trials(factory, storage, name, grace_period)


def fail_orphaned_trials(factory: sessionmaker[Session], storage: Any, name: str, grace_period: float) -> None:
    """Fail RUNNING trials older than the grace period that never recorded a heartbeat nor drew a param.

    Optuna's stale-trial check skips trials without a heartbeat row. A trial whose ``ask`` raised after
    starting it (a read cut by a dropped connection) is failed at once by its worker
    (:meth:`service.worker.Worker.fail_unrun`), unless the database stayed out longer than its retries or
    the worker died first: such a trial stays RUNNING with neither forever, and its study would never
    complete. Its slot was already returned and it has no params to retry, so it is only marked failed.
    """
    with factory() as session:
        trial_ids = _rdb.orphaned_trials(session, name, grace_period)
    for trial_id in trial_ids:
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", ORPHANED)
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        log.warning("study %s: trial id %d was left running without a heartbeat or params; marked failed", name, trial_id)


def purge_expired_trash(factory: sessionmaker[Session], storage: Any, artifact_store: Any, days: float) -> bool:
    """Purge the studies in the trash for longer than ``days`` (the API's :func:`service.studies.purge_expired`).

    Return False when the database refuses the deletes (a login of the worker role, which may delete
    nothing): the caller then stops trying, and the API purges when it is next called.
    """
    try:
        names = studies.purge_expired(factory, storage, artifact_store, days)
    except sa.exc.ProgrammingError as error:
        if getattr(error.orig, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
            raise
        log.info("this worker's database login may not delete: expired studies in the trash are purged by the API")
        return False
    if names:
        log.info("purged %d study(ies) kept in the trash longer than %g days: %s", len(names), days, ", ".join(names))
    return True
