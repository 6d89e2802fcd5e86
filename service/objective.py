"""One trial, from ``study.optimize``'s objective to what the service records once it ends.

:class:`Objective` suggests the trial's params, trains it (the training function returns one type,
:class:`Trained`), reports each epoch to the pruner (and stops within one epoch once the study is
stopped or the worker shuts down) and stores the training's :class:`~trainer._recipe.TrialMetrics`
as the trial's user attributes; what became of the trial is its :class:`TrialOutcome`.
:func:`settle` takes that outcome: it records a new leader, hands a failed trial to
:class:`~service.retries.RetryFailedTrial` (retry with the same params, slot given back) and moves
the study on once ``n_trials`` finished.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

import optuna
from sqlalchemy.orm import Session, sessionmaker

from service import _rdb, coordination, features, stages
from service._optuna import METRIC, distributions
from service.confirmation import SEED_ATTR, is_confirmation
from service.models import ACTIVE_STATUSES, STAGE_ATTR, SearchStudy, StudyStatus, TrialStage
from service.retries import RetryFailedTrial, through_outages
from service.schemas import StudySpec
from service.trials import is_search_trial
from trainer import RegularizationConfig, TrialMetrics

__all__ = ["NothingToConfirm", "Objective", "StudyStopped", "TrainFunction", "Trained", "TrialOutcome", "WorkerShutdown", "settle"]

log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class Trained:
    """What a training function returns: its metrics (``val_accuracy`` at least) and, if it kept one, the
    trained model (a Keras model or a :class:`trainer.TrainResult`), stored when the trial ranks among the
    configs whose models are kept."""

    metrics: TrialMetrics
    model: Any = None


#: ``train(spec, config, on_epoch_end) -> Trained``. A confirmation repeat calls ``train(spec, config,
#: on_epoch_end, seed=s)``: same training pool (``spec.seed``), validation split, data order and
#: initialisation seeded by ``s``.
TrainFunction = Callable[..., Trained]


@dataclasses.dataclass
class TrialOutcome:
    """What became of one ``study.optimize(objective, n_trials=1)`` call, as :func:`settle` takes it.

    ``trial_id``: the trial it ran (None if Optuna never created one); ``finished_here``: it completed or
    was pruned here (Optuna then tells that state unless another worker failed the trial meanwhile).

    A holder the worker owns and hands to its :class:`Objective`, which fills it in; the worker then
    passes it to :func:`settle`. Why a holder rather than a return value: the trial must run inside
    ``study.optimize`` (Optuna 5 runs the heartbeat thread only there: ``optuna/study/_optimize.py``
    ``_run_trial``), and ``optimize`` returns nothing; its callbacks get the frozen trial, but they are
    skipped when the final tell raises, which is exactly the case :func:`settle` must recognize (another
    worker's heartbeat check failed the trial while it ran here, so the tell finds it finished). So the
    objective writes the two facts as they happen: the trial id when the trial starts, and whether it
    finished here.
    """

    trial_id: int | None = None
    finished_here: bool = False


class NothingToConfirm(Exception):
    """A confirming study handed this worker a fresh trial (no repeat was waiting): it is dropped."""


class StudyStopped(Exception):
    """The study was stopped or deleted while this trial ran."""


class WorkerShutdown(Exception):
    """The worker was asked to shut down; the trial is re-queued for another worker."""


class Objective:
    """The objective of one ``study.optimize(objective, n_trials=1)`` call; it fills in ``outcome``, the
    caller's :class:`TrialOutcome` (why a holder: see there)."""

    def __init__(
        self, train: TrainFunction, factory: sessionmaker[Session], row: SearchStudy, spec: StudySpec,
        worker: str, shutdown: threading.Event, *, outcome: TrialOutcome, artifact_store: Any = None,
    ) -> None:
        self.train, self.factory, self.row, self.spec = train, factory, row, spec
        self.worker, self.shutdown = worker, shutdown
        self.outcome = outcome
        self.artifact_store = artifact_store

    def __call__(self, trial: optuna.Trial) -> float:
        self.outcome.trial_id = _rdb.trial_id(trial)
        trial.set_user_attr("worker", self.worker)
        confirming = is_confirmation(trial)
        state = None if confirming else coordination.lifecycle(self.factory, self.row.id)
        if state is not None and state.status == StudyStatus.CONFIRMING:
            # Another worker took the last waiting repeat between our check and our ask: no params drawn,
            # so the failed trial is not retried and its slot is given back.
            trial.set_user_attr("fail_reason", "nothing-to-confirm")
            raise NothingToConfirm(f"study {self.row.name!r} is confirming and no repeat is waiting")
        params = {
            name: trial.suggest_float(name, dist.low, dist.high, log=dist.log) for name, dist in distributions(self.spec).items()
        }
        if state is not None and state.search_ended_by is not None:
            # The search ended (a budget, a stopping rule) after this slot was claimed: recorded, not trained.
            self.outcome.finished_here = True
            raise optuna.TrialPruned(f"the search ended ({state.search_ended_by}) before this trial started")
        seed = {"seed": int(trial.user_attrs[SEED_ATTR])} if confirming else {}
        try:
            trained = self.train(self.spec, RegularizationConfig.from_dict(params), self._epoch_reporter(trial, searching=not confirming), **seed)
        except optuna.TrialPruned:
            self.outcome.finished_here = True
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
        metrics = trained.metrics
        for name in TrialMetrics.model_fields:
            value = getattr(metrics, name)
            if value is not None and math.isfinite(value):
                trial.set_user_attr(name, value)
        if metrics.val_accuracy is None:
            raise ValueError("the training reported no val_accuracy")
        self._record_features(trial, metrics, trained.model)
        self.outcome.finished_here = math.isfinite(metrics.val_accuracy)  # a NaN value makes Optuna fail the trial
        return metrics.val_accuracy

    # -- issue 11: the gap constraint and the best trial's model --
    def _record_features(self, trial: optuna.Trial, metrics: TrialMetrics, model: Any) -> None:
        """Record the ``max_gap`` constraint; store the model if this feasible trial ranks among the top configs.

        Both happen here, before the objective returns: Optuna takes constraints and artifacts
        from running trials only.
        """
        constraint = features.record_gap_constraint(trial, metrics.gap, self.spec.max_gap)
        if constraint is not None and constraint > 0:
            return  # infeasible: never the best, so its model is never kept
        if (
            self.artifact_store is None
            or model is None  # a training that kept no model
            or not is_search_trial(trial)
            or not math.isfinite(metrics.val_accuracy)
        ):
            return
        try:  # the model is materialized and uploaded only when the trial ranks among the configs whose models are kept
            record = features.store_model(trial.study, trial, metrics.val_accuracy, model, self.artifact_store, self.spec.confirm)
        except Exception as error:  # noqa: BLE001 - a store hiccup must not cost the trial its result
            log.warning("study %s: trial %d's model not stored (%s: %s)", self.row.name, trial.number,
                        error.__class__.__name__, error)
            return
        if record is not None:
            log.info("study %s: stored the model of trial %d (%d bytes)", self.row.name, trial.number, record.size_bytes)

    def _epoch_reporter(self, trial: optuna.Trial, *, searching: bool) -> Callable[[int, Mapping[str, float]], None]:
        history: list[dict[str, float]] = []
        prunable = _prunable(trial)

        def on_epoch_end(epoch: int, metrics: Mapping[str, float]) -> None:
            history.append({key: float(value) for key, value in metrics.items() if isinstance(value, (int, float))})
            trial.set_user_attr("history", history)
            trial.report(float(metrics[METRIC]), epoch)
            state = coordination.lifecycle(self.factory, self.row.id)
            if state is None or state.status not in ACTIVE_STATUSES:
                raise StudyStopped(f"study {self.row.name!r} was stopped")
            if searching:
                # A spent budget ends the search (one worker records why); its trials end here, pruned, their
                # epochs kept (a trial at its last epoch completes). A confirmation repeat runs to the end.
                ended = state.search_ended_by or stages.check_search(self.factory, self.row, state)
                if ended and epoch + 1 < self.spec.epochs:
                    raise optuna.TrialPruned(f"epoch {epoch}: the search ended ({ended})")
            if self.shutdown.is_set():
                raise WorkerShutdown(f"worker {self.worker} is shutting down")
            if prunable and trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: {METRIC} {metrics[METRIC]:.4f}")

        return on_epoch_end


#: Stages whose trials run to the end: the reference (the yardstick) and confirmation repeats (issue 10).
UNPRUNED_STAGES = frozenset({TrialStage.REFERENCE, TrialStage.CONFIRM})


def _prunable(trial: optuna.Trial) -> bool:
    """Whether the pruner may stop this trial (not the reference, not a confirmation repeat)."""
    return trial.user_attrs.get(STAGE_ATTR) not in UNPRUNED_STAGES


def settle(
    outcome: TrialOutcome, *, factory: sessionmaker[Session], storage: Any, retry: RetryFailedTrial, study: optuna.Study,
    row: SearchStudy, spec: StudySpec, max_failed_trials: int, grace_period_s: float = 60.0,
) -> None:
    """Record what became of the outcome's trial: a new leader, a retry, the next stage, a completed study."""
    trial = through_outages(storage.get_trial, outcome.trial_id)  # a failed trial read here must reach its retry
    state = trial.state
    if state == optuna.trial.TrialState.COMPLETE:
        # The leader by mean over the feasible search trials and their confirmation repeats (a search
        # trial's single value during the search): service.confirmation.summarize.
        if coordination.record_leader(factory, row.id, lambda: study.get_trials(deepcopy=False), spec.confirm):
            log.info("study %s: trial %d's config leads (%.4f)", row.name, trial.number, trial.value)
    elif state == optuna.trial.TrialState.FAIL:
        if outcome.finished_here:
            # The objective completed (or was pruned) here, yet the trial is FAIL: another worker's
            # heartbeat check declared it stale while it ran (a heartbeat write lost to a dropped
            # connection), and its retry callback already re-queued it and gave the slot back.
            # Doing both again would let the study exceed n_trials.
            log.warning("study %s: trial %d was failed by a heartbeat check while it ran here", row.name, trial.number)
            return
        try:
            if trial.user_attrs.get("fail_reason") == "error":
                error = trial.user_attrs.get("error", "trial failed")
                if coordination.record_failure(factory, row.id, error, max_failed_trials):
                    log.error("study %s failed after repeated trial errors: %s", row.name, error)
        finally:
            retry.retry(study, trial, row.id)  # re-queued unless the study has ended; the slot given back
    # RUNNING here means the final tell did not reach the database: the heartbeat check fails
    # and re-queues it once its grace period is over.
    if state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
        if is_search_trial(trial):
            stages.check_search(factory, row, spec=spec, study=study)  # the budgets, then the stop_when rules
        stages.advance(factory, study, row, spec, grace_period_s)
