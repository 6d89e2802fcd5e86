"""Failed trials are re-run with the same params by Optuna's own retry callback.

:class:`RetryFailedTrial` wraps :class:`optuna.storages.RetryHeartbeatStaleTrialCallback` (which
queues a ``WAITING`` copy of the trial, records ``failed_trial`` and ``retry_history`` in its system
attributes and applies the ``max_retry`` rule) with the service's bookkeeping: a study that has
ended gets no retry, and the failed trial's slot is given back so that its retry (or a fresh
trial) can take it. It serves both kinds of failure: Optuna calls it for a trial whose worker
stopped heart-beating (``RDBStorage(heartbeat_stale_trial_callback=...)``), and the worker calls it
for a trial whose training raised or whose worker shut down.

A failure is settled once: the first caller marks the trial (:data:`~service._rdb.SETTLED`, a system
attribute whose row is unique per trial, written by :func:`service._rdb.claim_settlement`) and only that caller re-queues it and gives its slot back. A trial
that another worker's heartbeat check failed while it still ran here would otherwise be re-queued
twice. A failure nobody settled (a connection dropped between Optuna failing the trial and calling
back) is found and re-queued by :func:`retry_unsettled_failures`, from the worker's sweep.
"""

from __future__ import annotations

import copy
import logging

import optuna
import sqlalchemy as sa
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial
from sqlalchemy.orm import Session, sessionmaker

from service import _rdb, coordination, studies
from service._optuna import retry_of
from service._rdb import SETTLED
from service.backoff import backoff
from service.confirmation import CONFIRMS_ATTR, REPEAT_ATTR, SEED_ATTR
from service.features import trial_params
from service.models import ACTIVE_STATUSES, STAGE_ATTR, StudyStatus

__all__ = ["ORPHANED", "OUTAGES", "SETTLED", "WORKER_LOST", "RetryFailedTrial", "retry_unsettled_failures", "through_outages"]

log = logging.getLogger(__name__)

#: User attributes a retry keeps: what the trial *is* (its stage; for a confirmation repeat the config it
#: repeats, the repeat and its seed), not what its failed run left (worker, error, history, metrics).
KEPT_ATTRS = (STAGE_ATTR, CONFIRMS_ATTR, REPEAT_ATTR, SEED_ATTR)


#: ``fail_reason`` of a trial whose worker stopped heart-beating (killed, machine lost).
WORKER_LOST = "worker lost"
#: ``fail_reason`` of a RUNNING trial nobody runs: its ``ask`` raised after starting it (:mod:`service.sweeps`).
ORPHANED = "orphaned"

#: What a lost connection raises (directly, or through Optuna's storage); not a refused statement.
OUTAGES = (sa.exc.OperationalError, sa.exc.InterfaceError, optuna.exceptions.StorageInternalError)


def through_outages(function, *args):
    """``function(*args)``, retried through short database outages (a dropped connection, a restarting
    PostgreSQL): a retry lost to one would be lost for good."""
    retrying = backoff(first=0.2, cap=2.0, attempts=6, retry_on=OUTAGES)
    return retrying(function, *args)


def _study_row(factory: sessionmaker[Session], name: str):
    with factory() as session:  # a fresh session per attempt: one that saw a dropped connection must roll back first
        return studies.get_study(session, name)


class RetryFailedTrial:
    """Re-queue a failed trial with the same params (up to ``max_retries`` times) and give its slot back."""

    def __init__(self, factory: sessionmaker[Session], max_retries: int) -> None:
        self._factory = factory
        with _rdb.quiet():
            self._retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retries)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna's stale-trial callback: ``trial`` lost its worker.

        Optuna has already failed the trial when it calls this, and a database error here would lose
        its retry for good (nothing calls back twice): every step goes through :func:`through_outages`.
        """
        try:
            row = through_outages(_study_row, self._factory, study.study_name)
        except studies.StudyNotFound:
            return  # deleted: nothing to retry, no slot to give back
        try:
            self.retry(study, trial, row.id, StudyStatus(row.status), reason=WORKER_LOST)
        finally:
            through_outages(_rdb.record_fail_reason, self._factory, trial, WORKER_LOST)

    def retry(
        self, study: optuna.Study, trial: FrozenTrial, study_id: int, status: StudyStatus | None = None, reason: str = "error",
        *, release: bool = True,
    ) -> None:
        """Re-queue ``trial`` unless its study has ended or it has no params (none drawn, none enqueued); give its slot back either way
        (unless ``release`` is false). Only the first call for a trial does anything: see :data:`SETTLED`."""
        if not through_outages(_rdb.claim_settlement, self._factory, _rdb.trial_id(trial), reason):
            log.info("study %s: trial %d's failure was already settled by another worker", study.study_name, trial.number)
            return
        try:
            # Its params: those drawn, or those it was enqueued with (a reference that failed before drawing any).
            params = trial_params(trial)
            if status is None and params:  # read again: the trial may have ended (stopped, failed) its study
                state = through_outages(coordination.lifecycle, self._factory, study_id)
                status = None if state is None else state.status
            if params and status in ACTIVE_STATUSES:
                log.warning("study %s: trial %d failed (%s); re-queued with the same params unless out of retries",
                            study.study_name, trial.number, trial.user_attrs.get("fail_reason", reason))
                # The retry starts with a clean record (no worker, error or history of the failed run)
                # but keeps what the trial is (KEPT_ATTRS), so a confirmation repeat stays one.
                fresh = copy.deepcopy(trial)
                fresh.user_attrs = {key: value for key, value in trial.user_attrs.items() if key in KEPT_ATTRS}
                fresh.system_attrs = {key: value for key, value in trial.system_attrs.items() if key not in (SETTLED, _rdb.CREATION_ATTR)}
                through_outages(self._retry, study, fresh)  # before the release, so that the retry takes the slot
        finally:
            if release:
                through_outages(coordination.release_slot, self._factory, study_id)


def retry_unsettled_failures(factory: sessionmaker[Session], study: optuna.Study, study_id: int, grace_period: float) -> int:
    """Settle failed trials that nobody settled within the grace period; return how many there were.

    Optuna's heartbeat check fails every stale trial first and calls back afterwards, so a connection
    dropped in between leaves a failed trial whose retry was never queued (as does a worker whose own
    trial failed just as its connection dropped). Such a trial is settled here by the same
    :class:`RetryFailedTrial` (same params, same retry limit), except for its slot: that one is given
    back by :func:`service.coordination.reclaim_leaked_slots` once the study is quiet, and giving it back
    here as well would count it twice.
    """
    retry = _rdb.stale_trial_callback(study)
    if not isinstance(retry, RetryFailedTrial):
        return 0
    with factory() as session:
        trial_ids = _rdb.unsettled_failures(session, study.study_name, grace_period)
    if not trial_ids:
        return 0
    everything = study.get_trials(deepcopy=False)
    retried = {retry_of(trial) for trial in everything}
    for trial in everything:
        if _rdb.trial_id(trial) not in trial_ids:
            continue
        if trial.number in retried:  # failed before failures were marked, and retried then: only marked now
            through_outages(_rdb.claim_settlement, factory, _rdb.trial_id(trial), "retried")
            continue
        log.warning("study %s: trial %d failed and nobody settled it (a connection lost meanwhile); settling it now",
                    study.study_name, trial.number)
        retry.retry(study, trial, study_id, reason=trial.user_attrs.get("fail_reason", WORKER_LOST), release=False)
    return len(trial_ids)
