"""The worker: pulls runnable studies from SQL and runs their trials through Optuna.

One trial at a time, each in its own ``study.optimize(..., n_trials=1)`` so that Optuna's
heartbeats guard it:

1. **Claim a slot** with a conditional UPDATE (:func:`service.studies.claim_slot`): a study never
   has more than ``n_trials`` slots taken, whatever the number of workers.
2. **Run the trial** with ``study.optimize``: Optuna first fails trials whose worker stopped
   heart-beating (killed, machine lost) and :meth:`Worker._on_stale_trial` re-queues each with the
   same params and gives its slot back; ``ask`` then hands out a re-queued trial before sampling
   a new point. Every epoch reports validation accuracy to the pruner and checks whether the study
   was stopped or deleted, so a stop takes effect within one epoch.
3. **Settle**: a complete trial may become the best (a best-config row); a failed one gives its
   slot back and is re-queued with the same params (up to ``max_retries`` times); the study is
   marked completed once ``n_trials`` trials finished.
4. **Sweep** (when a study is full, or the worker is idle): fail trials of dead workers, in active
   and in stopped or failed studies alike; give back slots that no trial holds once the study has
   been quiet for the grace period (a worker killed between its claim and its trial); complete the
   study if done.

The worker keeps one Optuna ``Study`` per active study and re-seeds its sampler per trial, so
Optuna's trial cache survives between trials: the per-trial cost stays flat as the study grows.

Database hiccups (a restarted PostgreSQL, a dropped connection) are logged and retried with
exponential back-off; they never end the worker.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

import optuna

from service import studies
from service._optuna import distributions, make_sampler, open_study
from service.config import Settings
from service.db import create_engine, migrate, optuna_storage, session_factory
from service.models import SearchStudy
from service.schemas import StudySpec
from trainer import RegularizationConfig

__all__ = ["KerasTraining", "TrainFunction", "Worker", "StudyStopped", "WorkerShutdown"]

log = logging.getLogger(__name__)

#: ``train(spec, config, on_epoch_end) -> result`` where result holds at least ``val_accuracy``
#: (and, from real training, train_accuracy, gap, images_per_second, wall_time_s, epochs_run, train_size).
TrainFunction = Callable[[StudySpec, RegularizationConfig, Callable[[int, Mapping[str, float]], None]], Mapping[str, Any]]

_RESULT_ATTRS = ("train_accuracy", "gap", "images_per_second", "wall_time_s", "epochs_run", "train_size")


class StudyStopped(Exception):
    """The study was stopped or deleted while this trial ran."""


class WorkerShutdown(Exception):
    """The worker was asked to shut down; the trial is re-queued for another worker."""


class KerasTraining:
    """Trains a trial with :func:`trainer.train`, loading each data set once per worker.

    The cache is keyed by everything that changes the arrays (directory, train_size,
    val_fraction, seed), so studies on the same data share one copy and the decoding cost is paid
    once per worker rather than once per trial.
    """

    def __init__(self, data_dir: str | None, cache_size: int = 2) -> None:
        self.data_dir = data_dir
        self.cache_size = cache_size
        self._cache: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        self.loads = 0

    def data(self, spec: StudySpec) -> Any:
        import trainer

        key = (self.data_dir, spec.data.train_size, spec.data.val_fraction, spec.seed)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        data = trainer.load_cifar10(
            self.data_dir,
            train_size=spec.data.train_size,
            val_fraction=spec.data.val_fraction,
            seed=spec.seed,
            include_test=False,
        )
        self.loads += 1
        self._cache[key] = data
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return data

    def __call__(self, spec: StudySpec, config: RegularizationConfig, on_epoch_end) -> dict[str, Any]:
        import trainer

        data = self.data(spec)
        settings = trainer.TrainSettings.from_recipe(spec)
        # trainer.train reuses this process's compiled model across trials of the same shape.
        result = trainer.train(config, data, settings, on_epoch_end=on_epoch_end)
        return {
            "val_accuracy": float(result.val_accuracy),
            "train_accuracy": float(result.train_accuracy),
            "gap": float(result.gap),
            "images_per_second": float(result.images_per_second),
            "wall_time_s": float(result.wall_time_s),
            "epochs_run": int(result.epochs_run),
            "train_size": int(len(data.x_train)),
        }


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
        #: One Optuna Study per active study, keyed by (row id, created_at) so a deleted and
        #: re-created study never reuses a stale object. Keeping it keeps Optuna's trial cache:
        #: a fresh Study per trial re-reads every finished trial, so the cost grew with the study.
        self._studies: dict[tuple[int, Any], optuna.Study] = {}
        self._active_studies = 0

    # ----------------------------------------------------------------------------------------------
    # lifecycle

    @property
    def shutdown_requested(self) -> bool:
        return self._shutdown.is_set()

    def request_shutdown(self) -> None:
        """Finish (or re-queue, at the next epoch) the current trial and exit."""
        self._shutdown.set()

    def _connect(self) -> None:
        if self._storage is not None:
            return
        migrate(self.settings)  # idempotent and safe to race; lets a worker start on a fresh database
        self._engine = create_engine(self.settings)
        self._factory = session_factory(self._engine)
        self._storage = optuna_storage(self.settings, heartbeat=True, on_stale_trial=self._on_stale_trial)

    def run(self) -> int:
        """The worker loop; returns the process exit code."""
        backoff = 0.5
        log.info("worker %s started", self.name)
        while not self._shutdown.is_set():
            try:
                self._connect()
                did_work = self.run_once()
                backoff = 0.5
            except Exception as error:  # noqa: BLE001 - a worker outlives database outages and bugs alike
                log.warning("worker %s: %s; retrying in %.1fs", self.name, error.__class__.__name__ + f": {error}"[:500], backoff)
                self._shutdown.wait(backoff)
                backoff = min(backoff * 2, self.settings.db_retry_max_s)
                continue
            if not did_work:
                # An active study with nothing to claim still has trials running (or a slot about
                # to be reclaimed): one of them may fail and need a retry, so an exit-when-idle
                # worker stays until every study it could serve has ended.
                if self.exit_when_idle and not self._active_studies:
                    break
                self._shutdown.wait(self.poll_interval)
        log.info("worker %s stopped after %d trial(s)", self.name, self.trials_run)
        if self._engine is not None:
            self._engine.dispose()
        return 0

    def run_once(self) -> bool:
        """Run at most one trial of the least-served runnable study; return whether anything ran."""
        self._connect()
        with self._factory() as session:
            rows = studies.runnable_studies(session)
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
        self._sweep_ended_studies()
        return False

    def _study(self, row: SearchStudy, spec: StudySpec, serial: int | None = None) -> optuna.Study:
        """This worker's Optuna Study for ``row``, its sampler re-seeded for slot ``serial``."""
        key = (row.id, row.created_at)
        study = self._studies.get(key)
        if study is None:
            study = self._studies[key] = open_study(self._storage, spec, claim_serial=serial or 0)
        elif serial is not None:
            study.sampler = make_sampler(spec, serial)
        return study

    # ----------------------------------------------------------------------------------------------
    # one trial

    def _run_trial(self, row: SearchStudy) -> bool:
        serial = studies.claim_slot(self._factory, row.id)
        if serial is None:
            return False
        spec = StudySpec.model_validate(row.spec)
        started: dict[str, int] = {}
        try:
            study = self._study(row, spec, serial)
            study.optimize(lambda trial: self._objective(trial, row, spec, started), n_trials=1, catch=(Exception,))
        finally:
            if "trial_id" not in started:
                studies.release_slot(self._factory, row.id)  # no trial was created: the slot was never used
            else:
                self.trials_run += 1
                self._settle(study, row, spec, started["trial_id"], finished_here="finished_here" in started)
        return True

    def _objective(self, trial: optuna.Trial, row: SearchStudy, spec: StudySpec, started: dict[str, int]) -> float:
        started["trial_id"] = trial._trial_id
        trial.set_user_attr("worker", self.name)
        params = {name: trial.suggest_float(name, dist.low, dist.high, log=dist.log) for name, dist in distributions(spec).items()}
        config = RegularizationConfig.from_dict(params)
        history: list[dict[str, float]] = []

        def on_epoch_end(epoch: int, metrics: Mapping[str, float]) -> None:
            history.append({key: float(value) for key, value in metrics.items() if isinstance(value, (int, float))})
            trial.set_user_attr("history", history)
            trial.report(float(metrics["val_accuracy"]), epoch)
            if studies.status_of(self._factory, row.id) not in ("queued", "running"):
                raise StudyStopped(f"study {row.name!r} was stopped")
            if self._shutdown.is_set():
                raise WorkerShutdown(f"worker {self.name} is shutting down")
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: val_accuracy {metrics['val_accuracy']:.4f}")

        try:
            result = self.train(spec, config, on_epoch_end)
        except optuna.TrialPruned:
            started["finished_here"] = 1
            raise
        except StudyStopped:
            trial.set_user_attr("fail_reason", "stopped")
            raise
        except WorkerShutdown:
            trial.set_user_attr("fail_reason", "worker-shutdown")
            raise
        except Exception as error:
            trial.set_user_attr("fail_reason", "error")
            trial.set_user_attr("error", f"{error.__class__.__name__}: {error}"[:2000])
            raise
        for key in _RESULT_ATTRS:
            if result.get(key) is not None:
                trial.set_user_attr(key, result[key])
        value = float(result["val_accuracy"])
        if math.isfinite(value):
            started["finished_here"] = 1  # Optuna will tell COMPLETE unless the trial was failed elsewhere
        return value

    def _settle(
        self, study: optuna.Study, row: SearchStudy, spec: StudySpec, trial_id: int, *, finished_here: bool = False
    ) -> None:
        trial = self._storage.get_trial(trial_id)
        state = trial.state
        if state == optuna.trial.TrialState.COMPLETE:
            if studies.record_best(self._factory, row.id, trial.number, trial.value, trial.params, trial.user_attrs.get("train_size")):
                log.info("study %s: trial %d is the new best (%.4f)", row.name, trial.number, trial.value)
        elif state == optuna.trial.TrialState.FAIL:
            reason = trial.user_attrs.get("fail_reason")
            if finished_here:
                # The objective completed (or was pruned) here, yet the trial is FAIL: another
                # worker's heartbeat check declared it stale while it ran (a heartbeat write lost
                # to a dropped connection), and its _on_stale_trial already re-queued it and gave
                # the slot back. Doing both again would let the study exceed n_trials.
                log.warning("study %s: trial %d was failed by a heartbeat check while it ran here", row.name, trial.number)
                return
            try:
                if reason == "error":
                    error = trial.user_attrs.get("error", "trial failed")
                    if studies.record_failure(self._factory, row.id, error, self.settings.max_failed_trials):
                        log.error("study %s failed after repeated trial errors: %s", row.name, error)
                if reason != "stopped":
                    self._requeue(study, trial)  # before the release, so that the retry takes the slot
            finally:
                studies.release_slot(self._factory, row.id)
        # RUNNING here means the final tell did not reach the database: the heartbeat check fails
        # and re-queues it once its grace period is over.
        if state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
            studies.complete_if_done(self._factory, row.id, row.name, row.n_trials)

    def _requeue(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        """Queue a WAITING copy of a failed trial (same params) unless it ran out of retries."""
        if not trial.params:
            return False
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        if len(history) > self.settings.max_retries:
            log.warning("study %s: trial %d failed %d time(s); not retried", study.study_name, history[0], len(history))
            return False
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                system_attrs={"failed_trial": history[0], "retry_history": history},
            )
        )
        return True

    def _on_stale_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Called by Optuna for a trial whose worker died: re-queue it, then give its slot back."""
        log.warning("study %s: trial %d lost its worker; re-queued with the same params", study.study_name, trial.number)
        with self._factory() as session:
            try:
                row = studies.get_study(session, study.study_name)
            except studies.StudyNotFound:
                return
        if row.status in ("queued", "running"):
            self._requeue(study, trial)
        studies.release_slot(self._factory, row.id)

    def _sweep(self, row: SearchStudy) -> None:
        """For a study whose slots are all taken: fail trials of dead workers, reclaim slots that no
        trial holds, and finish it if done."""
        if studies.complete_if_done(self._factory, row.id, row.name, row.n_trials):
            return
        try:
            study = self._study(row, StudySpec.model_validate(row.spec))
        except KeyError:
            return
        self._fail_stale_trials(study, row)
        if studies.reclaim_leaked_slots(self._factory, row.id, row.name, self.settings.grace_period):
            log.warning("study %s: gave back trial slot(s) whose worker died before its trial started", row.name)

    def _sweep_ended_studies(self) -> None:
        """Fail the trials that dead workers left RUNNING in stopped or failed studies.

        Only active studies are swept by :meth:`_sweep`; without this, a worker killed during a
        trial of a study stopped meanwhile would leave that trial ``running`` forever. One query
        when nothing needs it; no retry is queued (the study has ended).
        """
        with self._factory() as session:
            rows = studies.studies_with_running_trials(session)
        for row in rows:
            try:
                study = optuna.load_study(study_name=row.name, storage=self._storage)
            except KeyError:
                continue
            self._fail_stale_trials(study, row)

    def _fail_stale_trials(self, study: optuna.Study, row: SearchStudy) -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        self._fail_orphaned_trials(row)

    def _fail_orphaned_trials(self, row: SearchStudy) -> None:
        """Fail RUNNING trials that never recorded a heartbeat nor drew a param.

        Optuna's stale-trial check skips trials without a heartbeat row. A trial whose creation
        raced a dropped database connection (``ask`` raised in its worker, which gave the slot back)
        stays RUNNING with neither forever, and its study would never complete. Its slot was already
        returned and it has no params to retry, so it is only marked failed.
        """
        import datetime as dt

        import sqlalchemy as sa

        query = sa.text(
            "SELECT t.trial_id, t.datetime_start, t.state FROM trials t JOIN studies s ON s.study_id = t.study_id "
            "WHERE s.study_name = :name "
            "AND NOT EXISTS (SELECT 1 FROM trial_heartbeats h WHERE h.trial_id = t.trial_id) "
            "AND NOT EXISTS (SELECT 1 FROM trial_params p WHERE p.trial_id = t.trial_id)"
        )
        cutoff = dt.datetime.now() - dt.timedelta(seconds=self.settings.grace_period)  # Optuna's naive local time
        with self._factory() as session:
            rows = session.execute(query, {"name": row.name}).all()
        for trial_id, started, state in rows:
            if isinstance(started, str):
                started = dt.datetime.fromisoformat(started)
            if str(state).rsplit(".", 1)[-1] != "RUNNING" or (started is not None and started > cutoff):
                continue
            try:
                self._storage.set_trial_user_attr(trial_id, "fail_reason", "orphaned")
                self._storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker got there first
            log.warning("study %s: trial id %d was left running without a heartbeat or params; marked failed", row.name, trial_id)


