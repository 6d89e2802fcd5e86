"""The worker: pulls runnable studies from SQL and runs their trials through Optuna.

One trial at a time, each in its own ``study.optimize(..., n_trials=1)`` so that Optuna's
heartbeats guard it:

1. **Claim a slot** with a conditional UPDATE (:func:`service.coordination.claim_slot`): a study never
   has more than ``n_trials`` slots taken, whatever the number of workers.
   A spent budget ends the search first (:func:`service.stages.check_search`): no claim then.
2. **Run the trial** (:class:`service.objective.Objective`): Optuna first fails trials whose worker
   stopped heart-beating (killed, machine lost) and its stale-trial callback,
   :class:`service.retries.RetryFailedTrial`, re-queues each with the same params and gives its
   slot back; ``ask`` then hands out a re-queued trial before sampling a new point. Every epoch
   reports validation accuracy to the pruner and checks whether the study was stopped or deleted,
   so a stop takes effect within one epoch.
3. **Settle** (:func:`service.objective.settle`, given the trial's :class:`~service.objective.TrialOutcome`): a complete trial updates the best-config history
   (a row when the leader changes); a failed one is re-queued by the same callback (up to
   ``max_retries`` times) and gives its slot back; the study moves on once ``n_trials`` search trials
   finished (:mod:`service.stages`: the confirmation stage re-trains the top configs, then the study
   completes).
4. **Sweep** (:mod:`service.sweeps`, when a study is full or the worker is idle): move the study on
   if due, fail trials of dead workers, reclaim slots no trial holds; when idle, purge the trash's expired studies.

Beside the loop, a thread of the process delivers the webhooks' due deliveries
(:class:`service.webhooks.Dispatcher`), whether or not a trial is training.

The worker keeps one Optuna ``Study`` per active study, with its spec parsed once (validated at the
API's edge, never again per trial or per sweep), and re-seeds its sampler per trial, so Optuna's trial
cache survives between trials: the per-trial cost stays flat as the study grows.

Database hiccups (a restarted PostgreSQL, a dropped connection) are logged and retried with
:func:`service.backoff.backoff`; they never end the worker.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
from typing import Any

import optuna

from service import coordination, stages, sweeps
from service._optuna import make_sampler, open_study
from service.backoff import backoff
from service.config import Settings, artifact_location
from service.db import create_engine, migrate, optuna_storage, session_factory
from service.features import make_artifact_store
from service.models import SearchStudy, StudyStatus
from service.objective import Objective, TrainFunction, Trained, TrialOutcome, settle
from service.retries import ORPHANED, RetryFailedTrial, through_outages
from service.schemas import StudySpec
from service.webhooks import Dispatcher
from trainer import RegularizationConfig

__all__ = ["KerasTraining", "TrainFunction", "Worker"]

log = logging.getLogger(__name__)


class KerasTraining:
    """Trains a trial with :func:`trainer.train`, loading each data set once per worker.

    The cache is keyed by everything that changes the arrays (directory, train_size,
    val_fraction, seed, split seed), so studies on the same data share one copy and the decoding cost is paid
    once per worker rather than once per trial.
    """

    def __init__(self, data_dir: str | None, cache_size: int = 2) -> None:
        self.data_dir = data_dir
        self.cache_size = cache_size
        self._cache: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        self.loads = 0

    def data(self, spec: StudySpec, split_seed: int | None = None) -> Any:
        import trainer

        key = (self.data_dir, spec.data.train_size, spec.data.val_fraction, spec.seed, split_seed)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        data = trainer.load_cifar10(
            self.data_dir,
            train_size=spec.data.train_size,
            val_fraction=spec.data.val_fraction,
            seed=spec.seed,
            split_seed=split_seed,
            include_test=False,
        )
        self.loads += 1
        self._cache[key] = data
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return data

    def __call__(self, spec: StudySpec, config: RegularizationConfig, on_epoch_end, seed: int | None = None) -> Trained:
        """Train one trial; ``seed`` (a confirmation repeat) re-seeds the validation split, data order and
        initialisation, while the training pool stays the one ``spec.seed`` drew."""
        import trainer

        data = self.data(spec, split_seed=seed)
        settings = trainer.TrainSettings.from_recipe(spec)
        if seed is not None:
            settings = settings.model_copy(update={"seed": seed})
        # trainer.train reuses this process's compiled model across trials of the same shape. The
        # TrainResult is the model: the objective stores it when the trial ranks among the kept configs.
        result = trainer.train(config, data, settings, on_epoch_end=on_epoch_end)
        return Trained(metrics=result.metrics(), model=result)


class Worker:
    """Runs trials of runnable studies until shut down (or, with ``exit_when_idle``, until none is left)."""

    def __init__(
        self,
        settings: Settings,
        *,
        train: TrainFunction | None = None,
        poll_interval: float | None = None,
        exit_when_idle: bool = False,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        self.train = train or KerasTraining(settings.data_dir)
        self.poll_interval = poll_interval if poll_interval is not None else settings.poll_interval
        self.exit_when_idle = exit_when_idle
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.trials_run = 0
        self._shutdown = threading.Event()
        self._engine = None
        self._factory = None
        self._storage = None
        self._retry: RetryFailedTrial | None = None
        self._artifact_store: Any = None
        #: One Optuna Study per active study, with its parsed spec, keyed by (row id, created_at) so a
        #: deleted and re-created study never reuses a stale object. Keeping it keeps Optuna's trial
        #: cache: a fresh Study per trial re-reads every finished trial, so the cost grew with the study.
        self._studies: dict[tuple[int, Any], tuple[optuna.Study, StudySpec]] = {}
        self._active_studies = 0
        self._purges_trash = True  # until the database refuses (a worker role's login: sweeps.purge_expired_trash)
        #: delivers the webhooks: a thread of :meth:`run`, started once the database is reachable and migrated
        self._dispatcher = Dispatcher(settings, max(self.poll_interval, 0.25))

    @property
    def shutdown_requested(self) -> bool:
        return self._shutdown.is_set()

    def request_shutdown(self) -> None:
        """Finish (or re-queue, at the next epoch) the current trial and exit."""
        self._shutdown.set()

    def _connect(self) -> None:
        if self._storage is not None:
            return
        if self.settings.migrate_on_start:  # off where a migration job runs first (a worker role has no DDL)
            migrate(self.settings)  # idempotent and safe to race; lets a worker start on a fresh database
        self._engine = create_engine(self.settings)
        self._factory = session_factory(self._engine)
        self._retry = RetryFailedTrial(self._factory, self.settings.max_retries)
        self._storage = optuna_storage(self.settings, heartbeat=True, on_stale_trial=self._retry)
        self._artifact_store = make_artifact_store(artifact_location(self.settings))

    def run(self) -> int:
        """The worker loop; returns the process exit code."""
        log.info("worker %s started", self.name)
        retrying = backoff(first=0.5, cap=self.settings.db_retry_max_s, stop=self._shutdown, on_retry=self._log_retry)
        try:
            while not self._shutdown.is_set():
                try:
                    did_work = retrying(self._work)
                except Exception:  # noqa: BLE001 - re-raised only once a shutdown ended the retries
                    break
                if not did_work:
                    # An active study with nothing to claim still has trials running (or a slot about
                    # to be reclaimed): one of them may fail and need a retry, so an exit-when-idle
                    # worker stays until every study it could serve has ended.
                    if self.exit_when_idle and not self._active_studies:
                        break
                    self._shutdown.wait(self.poll_interval)
            log.info("worker %s stopped after %d trial(s)", self.name, self.trials_run)
        finally:  # the delivery thread never outlives the loop, however it ends
            self._dispatcher.stop()
            if self._engine is not None:
                self._engine.dispose()
        return 0

    def _work(self) -> bool:
        if self._shutdown.is_set():
            return False
        self._connect()
        self._dispatcher.start()  # once connected (and migrated); a no-op after the first time
        return self.run_once()

    def _log_retry(self, _attempt: int, error: BaseException, wait_s: float) -> None:
        # A worker outlives database outages and bugs alike.
        log.warning("worker %s: %s; retrying in %.1fs", self.name, f"{error.__class__.__name__}: {error}"[:500], wait_s)

    def run_once(self) -> bool:
        """Run at most one trial of the least-served runnable study; return whether anything ran."""
        self._connect()
        with self._factory() as session:
            rows = coordination.runnable_studies(session)
        self._active_studies = len(rows)
        active = {(row.id, row.created_at) for row in rows}
        for key in [key for key in self._studies if key not in active]:
            del self._studies[key]  # finished, stopped or deleted
        for row in rows:
            if self._shutdown.is_set():
                return False
            if self._run_trial(row):
                return True
            self._sweep(row)
        sweeps.sweep_ended_studies(self._factory, self._storage, self.settings.grace_period)
        if self._purges_trash:
            self._purges_trash = sweeps.purge_expired_trash(self._factory, self._storage, self._artifact_store,
                                                            self.settings.trash_days)
        return False

    def _study(self, row: SearchStudy, serial: int | None = None) -> tuple[optuna.Study, StudySpec]:
        """This worker's Optuna Study for ``row`` and its spec (parsed once per study), the sampler re-seeded
        for slot ``serial``."""
        key = (row.id, row.created_at)
        cached = self._studies.get(key)
        if cached is None:
            spec = StudySpec.model_validate(row.spec)  # validated by the API already: parsed once, here
            cached = self._studies[key] = (open_study(self._storage, spec, claim_serial=serial or 0), spec)
        elif serial is not None:
            cached[0].sampler = make_sampler(cached[1], serial)
        return cached

    def _run_trial(self, row: SearchStudy) -> bool:
        if row.status == StudyStatus.CONFIRMING:
            stages.check_confirmation(self._factory, self._storage, row, self._study(row)[1])  # confirm.max_hours
            with self._factory() as session:
                if not coordination.has_waiting_trials(session, row.name):
                    return False  # every repeat is running or done: a claim would only sample a stray trial
        elif row.search_ended_by is None and (row.max_runtime_s is not None or row.max_trial_hours is not None):
            # The runtime is the row's arithmetic; the trial-hours need a read, the lifecycle's (check_search makes it).
            state = None if row.max_trial_hours is not None else coordination.Lifecycle(
                StudyStatus(row.status), None, row.started_at, row.max_runtime_s, None, 0.0)
            if stages.check_search(self._factory, row, state):
                return False  # a budget ran out: no new search trial
        serial = coordination.claim_slot(self._factory, row.id)
        if serial is None:
            return False
        outcome = TrialOutcome()  # filled in by the objective: optimize returns nothing (see TrialOutcome)
        self._storage.mark_started(None)
        try:
            study, spec = self._study(row, serial)
            objective = Objective(self.train, self._factory, row, spec, self.name, self._shutdown,
                                  outcome=outcome, artifact_store=self._artifact_store)
            study.optimize(objective, n_trials=1, catch=(Exception,))  # heartbeats run only inside optimize
        finally:
            if outcome.trial_id is None:
                unrun = self._storage.started_trial()
                if unrun is not None:  # ask started a trial, then raised (its next read cut by a dropped connection)
                    self.fail_unrun(study, row, unrun)
                else:
                    coordination.release_slot(self._factory, row.id)  # no trial was created: the slot was never used
            else:
                self.trials_run += 1
                settle(outcome, factory=self._factory, storage=self._storage, retry=self._retry, study=study,
                       row=row, spec=spec, max_failed_trials=self.settings.max_failed_trials,
                       grace_period_s=self.settings.grace_period)
        return True

    def fail_unrun(self, study: optuna.Study, row: SearchStudy, trial_id: int) -> None:
        """Fail the trial this worker's ``ask`` started before raising (its objective never ran), re-queue it if it
        has params (a queued trial's), then give its slot back: failed before another worker can take that slot,
        it never stays RUNNING beside the slot's next trial, an orphan until a sweep fails it."""
        try:
            if through_outages(self._storage.get_trial, trial_id).state != optuna.trial.TrialState.RUNNING:
                raise optuna.exceptions.UpdateFinishedTrialError("already failed by a sweep")
            through_outages(self._storage.set_trial_user_attr, trial_id, "fail_reason", ORPHANED)
            through_outages(self._storage.set_trial_state_values, trial_id, optuna.trial.TrialState.FAIL)
            trial = through_outages(self._storage.get_trial, trial_id)
        except Exception as error:  # noqa: BLE001 - a sweep fails it (or did); the slot comes back now
            log.warning("worker %s: trial id %d, started by an ask that raised, not failed (%s)", self.name, trial_id, error)
            coordination.release_slot(self._factory, row.id)
            return
        log.warning("worker %s: study %s: trial %d, started by an ask that raised, marked failed", self.name, row.name,
                    trial.number)
        self._retry.retry(study, trial, row.id, reason=ORPHANED)  # re-queued if it has params; the slot given back

    def _sweep(self, row: SearchStudy) -> None:
        """For a study whose slots are all taken: move it on if due, else clean up after dead workers."""
        try:
            study, spec = self._study(row)
        except KeyError:
            return
        # check_budget=False: _run_trial checked a confirming study's budget just before this sweep
        if stages.advance(self._factory, study, row, spec, self.settings.grace_period, check_budget=False):
            return
        sweeps.sweep_study(self._factory, self._storage, study, row, self.settings.grace_period)
