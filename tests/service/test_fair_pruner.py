"""The fair pruner proposal (service.pruning) on a real in-memory Optuna study. Instant: no training."""

from __future__ import annotations

import optuna
import pytest

from service.pruning import make_fair_pruner

EPOCHS = 10
FAST = [0.30, 0.45, 0.52, 0.55, 0.56, 0.565, 0.567, 0.568, 0.569, 0.57]  # learns fast, plateaus


def _study(pruner):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for _ in range(6):  # six finished fast learners (more than n_startup_trials) set the median
        trial = study.ask()
        for epoch, value in enumerate(FAST):
            trial.report(value, epoch)
        study.tell(trial, FAST[-1])
    return study


def _first_pruned_epoch(study, curve):
    trial = study.ask()
    for epoch, value in enumerate(curve):
        trial.report(value, epoch)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return epoch
    study.tell(trial, curve[-1])
    return None


def test_a_slow_climber_survives_the_fair_pruner_but_not_the_median_one():
    slow = [0.20, 0.30, 0.38, 0.45, 0.50, 0.54, 0.57, 0.59, 0.60, 0.61]  # strong regularizer: ends best
    median = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1)
    assert _first_pruned_epoch(_study(median), slow) == 1
    assert _first_pruned_epoch(_study(make_fair_pruner(n_trials=20, epochs=EPOCHS)), slow) is None


def test_a_stalled_weak_trial_is_still_pruned():
    stalled = [0.20, 0.30, 0.33, 0.34, 0.34, 0.34, 0.34, 0.34, 0.34, 0.34]
    epoch = _first_pruned_epoch(_study(make_fair_pruner(n_trials=20, epochs=EPOCHS)), stalled)
    assert epoch is not None and 4 <= epoch < EPOCHS - 1  # after the warm-up, once it stopped improving


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="epochs"):
        make_fair_pruner(10, 0)
    with pytest.raises(ValueError, match="warmup_fraction"):
        make_fair_pruner(10, 10, warmup_fraction=1.5)
