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
import logging
import warnings

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial
from sqlalchemy.orm import Session, sessionmaker

from service import studies
from service.backoff import backoff
from service.models import ACTIVE_STATUSES, StudyStatus

__all__ = ["RetryFailedTrial"]

log = logging.getLogger(__name__)

#: User attributes a retry keeps: what the trial *is* (its stage; for a confirmation repeat the config it
#: repeats, the repeat and its seed), not what its failed run left (worker, error, history, metrics).
KEPT_ATTRS = ("stage", "confirms", "repeat", "seed")


class RetryFailedTrial:
    """Re-queue a failed trial with the same params (up to ``max_retries`` times) and give its slot back."""

    def __init__(self, factory: sessionmaker[Session], max_retries: int) -> None:
        self._factory = factory
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retries)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna's stale-trial callback: ``trial`` lost its worker."""
        with self._factory() as session:
            try:
                row = studies.get_study(session, study.study_name)
            except studies.StudyNotFound:
                return  # deleted: nothing to retry, no slot to give back
        self.retry(study, trial, row.id, StudyStatus(row.status), reason="no heartbeat")

    def retry(
        self, study: optuna.Study, trial: FrozenTrial, study_id: int, status: StudyStatus | None = None, reason: str = "error"
    ) -> None:
        """Re-queue ``trial`` unless its study has ended or it drew no params; give its slot back either way."""
        try:
            if status is None and trial.params:  # read again: the trial may have ended (stopped, failed) its study
                status = backoff(first=0.2, cap=1.0, attempts=4)(studies.status_of, self._factory, study_id)
            if trial.params and status in ACTIVE_STATUSES:
                log.warning("study %s: trial %d failed (%s); re-queued with the same params unless out of retries",
                            study.study_name, trial.number, trial.user_attrs.get("fail_reason", reason))
                # The retry starts with a clean record (no worker, error or history of the failed run)
                # but keeps what the trial is (KEPT_ATTRS), so a confirmation repeat stays one.
                fresh = copy.deepcopy(trial)
                fresh.user_attrs = {key: value for key, value in trial.user_attrs.items() if key in KEPT_ATTRS}
                self._retry(study, fresh)  # before the release, so that the retry takes the slot
        finally:
            studies.release_slot(self._factory, study_id)
