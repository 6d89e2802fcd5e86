"""Failed trials are re-run with the same params by Optuna's own retry callback.

:class:`RetryFailedTrial` wraps :class:`optuna.storages.RetryHeartbeatStaleTrialCallback` (which
queues a ``WAITING`` copy of the trial, records ``failed_trial`` and ``retry_history`` in its system
attributes and applies the ``max_retry`` rule) with the service's bookkeeping: a study that has
ended gets no retry, and the failed trial's slot is given back so that its retry (or a fresh
trial) can take it. It serves both kinds of failure: Optuna calls it for a trial whose worker
stopped heart-beating (``RDBStorage(heartbeat_stale_trial_callback=...)``), and the worker calls it
for a trial whose training raised or whose worker shut down.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings

import optuna
import sqlalchemy as sa
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial
from sqlalchemy.orm import Session, sessionmaker

from service import studies
from service.backoff import backoff
from service.models import ACTIVE_STATUSES, StudyStatus

__all__ = ["WORKER_LOST", "RetryFailedTrial"]

log = logging.getLogger(__name__)

#: User attributes a retry keeps: what the trial *is* (its stage; for a confirmation repeat the config it
#: repeats, the repeat and its seed), not what its failed run left (worker, error, history, metrics).
KEPT_ATTRS = ("stage", "confirms", "repeat", "seed")


#: ``fail_reason`` of a trial whose worker stopped heart-beating (killed, machine lost).
WORKER_LOST = "worker lost"

def _through_outages(function, *args):
    """``function(*args)``, retried through short database outages (a dropped connection, a restarting
    PostgreSQL): a retry lost to one would be lost for good."""
    retrying = backoff(first=0.2, cap=2.0, attempts=6, retry_on=(sa.exc.DBAPIError, optuna.exceptions.StorageInternalError))
    return retrying(function, *args)


def _study_row(factory: sessionmaker[Session], name: str):
    with factory() as session:  # a fresh session per attempt: one that saw a dropped connection must roll back first
        return studies.get_study(session, name)

#: Optuna's table of trial user attributes (one row per trial and key, the value as JSON).
_USER_ATTRS = sa.table("trial_user_attributes", sa.column("trial_id"), sa.column("key"), sa.column("value_json"))


def _record_fail_reason(factory: sessionmaker[Session], trial: FrozenTrial, reason: str) -> None:
    """Set ``fail_reason`` on a trial Optuna has already failed.

    Optuna's storage refuses to change a finished trial, and its heartbeat check fails the trial
    before it calls back; so the attribute is written to Optuna's table directly, in its format.
    """
    with factory() as session, session.begin():
        where = (_USER_ATTRS.c.trial_id == trial._trial_id) & (_USER_ATTRS.c.key == "fail_reason")
        session.execute(sa.delete(_USER_ATTRS).where(where))
        session.execute(sa.insert(_USER_ATTRS).values(trial_id=trial._trial_id, key="fail_reason", value_json=json.dumps(reason)))
    trial.user_attrs["fail_reason"] = reason


class RetryFailedTrial:
    """Re-queue a failed trial with the same params (up to ``max_retries`` times) and give its slot back."""

    def __init__(self, factory: sessionmaker[Session], max_retries: int) -> None:
        self._factory = factory
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retries)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna's stale-trial callback: ``trial`` lost its worker.

        Optuna has already failed the trial when it calls this, and a database error here would lose
        its retry for good (nothing calls back twice): every step goes through :func:`_through_outages`.
        """
        try:
            row = _through_outages(_study_row, self._factory, study.study_name)
        except studies.StudyNotFound:
            return  # deleted: nothing to retry, no slot to give back
        try:
            self.retry(study, trial, row.id, StudyStatus(row.status), reason=WORKER_LOST)
        finally:
            _through_outages(_record_fail_reason, self._factory, trial, WORKER_LOST)

    def retry(
        self, study: optuna.Study, trial: FrozenTrial, study_id: int, status: StudyStatus | None = None, reason: str = "error"
    ) -> None:
        """Re-queue ``trial`` unless its study has ended or it drew no params; give its slot back either way."""
        try:
            if status is None and trial.params:  # read again: the trial may have ended (stopped, failed) its study
                status = _through_outages(studies.status_of, self._factory, study_id)
            if trial.params and status in ACTIVE_STATUSES:
                log.warning("study %s: trial %d failed (%s); re-queued with the same params unless out of retries",
                            study.study_name, trial.number, trial.user_attrs.get("fail_reason", reason))
                # The retry starts with a clean record (no worker, error or history of the failed run)
                # but keeps what the trial is (KEPT_ATTRS), so a confirmation repeat stays one.
                fresh = copy.deepcopy(trial)
                fresh.user_attrs = {key: value for key, value in trial.user_attrs.items() if key in KEPT_ATTRS}
                _through_outages(self._retry, study, fresh)  # before the release, so that the retry takes the slot
        finally:
            _through_outages(studies.release_slot, self._factory, study_id)
