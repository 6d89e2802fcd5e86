"""max_gap through Optuna's constraints: an infeasible trial is never the best."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import FloatDistribution

from service.features import best_feasible, gap_constraint, is_feasible, record_gap_constraint
from trainer import SEARCH_SPACE

optuna.logging.set_verbosity(optuna.logging.WARNING)

DISTRIBUTIONS = {spec.name: FloatDistribution(spec.low, spec.high, log=spec.log) for spec in SEARCH_SPACE}


def run(study, value, gap, max_gap):
    trial = study.ask(DISTRIBUTIONS)
    trial.set_user_attr("gap", gap)
    record_gap_constraint(trial, gap, max_gap)
    study.tell(trial, value)


def test_gap_constraint_is_gap_minus_max_gap():
    assert gap_constraint(0.12, 0.1) == pytest.approx(0.02)
    assert gap_constraint(0.05, 0.1) == pytest.approx(-0.05)
    assert gap_constraint(float("nan"), 0.1) == math.inf


def test_infeasible_trial_is_never_the_best_for_optuna_nor_for_us(sqlite_url):
    study = optuna.create_study(
        direction="maximize", storage=sqlite_url, study_name="gap", sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2)
    )
    run(study, 0.60, 0.25, 0.1)  # the highest accuracy, but overfits
    run(study, 0.55, 0.04, 0.1)
    run(study, 0.50, 0.02, 0.1)
    trials = study.trials
    assert trials[0].constraints == {"gap": pytest.approx(0.15)} and trials[0].user_attrs["constraint"] == [pytest.approx(0.15)]
    assert [is_feasible(t) for t in trials] == [False, True, True]
    assert study.best_trial.number == 1  # Optuna's own best respects the constraint
    assert best_feasible(trials).number == 1
    # TPE samples from the constrained history without complaint.
    run(study, 0.58, 0.01, 0.1)
    assert best_feasible(study.trials).number == 3 == study.best_trial.number


def test_without_max_gap_nothing_is_recorded_and_every_trial_is_feasible():
    study = optuna.create_study(direction="maximize")
    run(study, 0.6, 0.5, None)
    assert study.trials[0].constraints == {} and is_feasible(study.trials[0])
    assert best_feasible(study.trials, maximize=False).number == 0
    assert best_feasible([]) is None
