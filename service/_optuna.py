"""How a study spec becomes Optuna objects: distributions, sampler, pruner, the study itself."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.storages import RetryHeartbeatStaleTrialCallback

from service._rdb import quiet
from service.pruning import make_fair_pruner
from service.schemas import StudySpec
from trainer import SEARCH_SPACE

__all__ = ["DIRECTION", "METRIC", "distributions", "make_pruner", "make_sampler", "open_study", "retry_of"]

METRIC = "val_accuracy"
DIRECTION = "maximize"


def distributions(spec: StudySpec) -> dict[str, FloatDistribution]:
    """One Optuna distribution per declared parameter, with the study's bounds."""
    space = spec.search_space
    return {
        param.name: FloatDistribution(getattr(space, param.name).low, getattr(space, param.name).high, log=param.log)
        for param in SEARCH_SPACE
    }


def make_sampler(spec: StudySpec, claim_serial: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded per trial slot.

    Each trial gets its own sampler seeded from the study seed and the slot's serial number: the
    search stays reproducible for a given seed, yet parallel workers don't draw the same point (a
    shared seed would make their random start-up trials identical).
    """
    seed = (spec.seed * 1_000_003 + claim_serial) % (2**32)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(1, spec.n_trials // 4)))


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    if spec.pruner == "none":
        return optuna.pruners.NopPruner()
    if spec.pruner == "fair":
        return make_fair_pruner(spec.n_trials, max(spec.epochs, 1))
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(spec.epochs, 1))
    return optuna.pruners.MedianPruner(n_startup_trials=min(5, max(1, spec.n_trials // 4)), n_warmup_steps=1)


def open_study(storage: Any, spec: StudySpec, *, claim_serial: int = 0) -> optuna.Study:
    """Load the Optuna study of ``spec``, creating it if needed (concurrent creators are fine)."""
    sampler, pruner = make_sampler(spec, claim_serial), make_pruner(spec)
    try:
        return optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        pass
    return optuna.create_study(
        storage=storage,
        study_name=spec.name,
        direction=DIRECTION,
        load_if_exists=True,
        sampler=sampler,
        pruner=pruner,
    )


def retry_of(trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of the failed trial that ``trial`` re-runs (the last of its retry history), or None.

    Retries are queued by :class:`optuna.storages.RetryHeartbeatStaleTrialCallback` (see
    :mod:`service.retries`), which records the history this reads.
    """
    with quiet():
        history = RetryHeartbeatStaleTrialCallback.retry_history(trial)
    return history[-1] if history else None
