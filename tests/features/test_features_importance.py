"""Importance: Optuna's own evaluators, a minimum, at most one computation per trial count."""

from __future__ import annotations

import concurrent.futures
import math

import optuna
import pytest

from service.features import MIN_TRIALS, ImportanceCache, TooFewTrials, importance
from service.models import STAGE_ATTR, TrialStage
from trainer import SEARCH_SPACE

optuna.logging.set_verbosity(optuna.logging.WARNING)


def objective(trial: optuna.Trial) -> float:
    params = {spec.name: trial.suggest_float(spec.name, spec.low, spec.high, log=spec.log) for spec in SEARCH_SPACE}
    # weight_decay matters most, dropout_conv a little, the others not at all.
    return -((math.log10(params["weight_decay"]) + 3.5) ** 2) - 2.0 * (params["dropout_conv"] - 0.4) ** 2


def make_study(n_trials: int, storage=None, name="imp") -> optuna.Study:
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.RandomSampler(seed=3), storage=storage, study_name=name
    )
    study.optimize(objective, n_trials=n_trials)
    return study


def test_ped_anova_matches_optunas_own_default_evaluator():
    study = make_study(30)
    ours = importance(study)
    assert ours.evaluator == "ped-anova" and ours.n_trials == 30
    assert ours.importances == optuna.importance.get_param_importances(study)  # Optuna 5's default: PED-ANOVA
    assert list(ours.importances)[0] == "weight_decay"
    assert sum(ours.importances.values()) == pytest.approx(1.0)


def test_fanova_matches_optunas_fanova_evaluator():
    study = make_study(30)
    ours = importance(study, "fanova")
    expected = optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    assert ours.importances == pytest.approx(expected)
    assert list(ours.importances)[0] == "weight_decay"


def test_confirmation_repeats_are_left_out_of_the_ranking():
    """Repeats of the top configs (other seeds, the same params) would weigh the best region several times."""
    study = make_study(20)
    search_only = importance(study)
    best = study.best_trial
    for repeat in range(1, 4):
        study.add_trial(optuna.trial.create_trial(
            params=best.params, distributions=best.distributions, value=best.value - 0.01 * repeat,
            user_attrs={STAGE_ATTR: TrialStage.CONFIRM, "confirms": best.number, "repeat": repeat},
        ))
    ours = importance(study)
    assert ours.n_trials == 20 and ours.importances == search_only.importances
    assert ours.importances != optuna.importance.get_param_importances(study)  # Optuna's own call counts the repeats
    few = _with_repeats(make_study(MIN_TRIALS - 1, name="few-rep"))  # complete trials enough, search trials not
    with pytest.raises(TooFewTrials, match=rf"has {MIN_TRIALS - 1} complete"):
        importance(few)


def _with_repeats(study: optuna.Study) -> optuna.Study:
    best = study.best_trial
    for repeat in (1, 2):
        study.add_trial(optuna.trial.create_trial(params=best.params, distributions=best.distributions, value=best.value,
                                                  user_attrs={STAGE_ATTR: TrialStage.CONFIRM, "repeat": repeat}))
    return study


def test_below_the_minimum_is_a_clear_error_and_a_bad_evaluator_is_named():
    study = make_study(MIN_TRIALS - 1, name="few")
    with pytest.raises(TooFewTrials, match=rf"'few' has {MIN_TRIALS - 1} complete trial\(s\); parameter importance needs at least {MIN_TRIALS}"):
        importance(study)
    with pytest.raises(ValueError, match="evaluator must be one of"):
        ImportanceCache().get(study, "shap")


def test_cache_computes_once_per_trial_count_even_under_concurrent_requests(sqlite_url):
    storage = optuna.storages.RDBStorage(sqlite_url)
    study = make_study(MIN_TRIALS, storage=storage)
    cache = ImportanceCache()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: cache.get(optuna.load_study(study_name="imp", storage=storage)), range(8)))
    assert cache.computed == 1 and all(result == results[0] for result in results)
    assert cache.get(study, "fanova").evaluator == "fanova" and cache.computed == 2
    study.optimize(objective, n_trials=1)  # one more finished trial: recomputed once
    again = cache.get(study)
    assert again.n_trials == MIN_TRIALS + 1 and cache.computed == 3
    assert cache.get(study) is again and cache.computed == 3
    cache.forget("imp")
    cache.get(study)
    assert cache.computed == 4


def test_constant_values_give_zero_importances_with_a_note_computed_once():
    """Every trial scored the same: fANOVA's forest raises 'zero total variance'; the answer says so instead."""
    def flat(trial: optuna.Trial) -> float:
        for spec in SEARCH_SPACE:
            trial.suggest_float(spec.name, spec.low, spec.high, log=spec.log)
        return 0.5

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=3), study_name="flat")
    study.optimize(flat, n_trials=MIN_TRIALS)
    cache = ImportanceCache()
    for evaluator in ("fanova", "ped-anova"):
        for _ in range(2):
            flat = cache.get(study, evaluator)
            assert flat.importances == {name: 0.0 for name in sorted(spec.name for spec in SEARCH_SPACE)}
            assert f"all {MIN_TRIALS} complete trials scored the same value" in flat.note
    assert cache.computed == 2  # once per evaluator: cached like any other answer
    assert importance(make_study(MIN_TRIALS)).note is None
