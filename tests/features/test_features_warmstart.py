"""enqueue (partial configs filled from the defaults) and warm_start_from, on real Optuna studies."""

from __future__ import annotations


import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from service.features import (
    IncompatibleStudy,
    enqueue_configs,
    enqueue_reference,
    fill_config,
    search_bounds,
    warm_start_trials,
)
from service.models import STAGE_ATTR
from trainer import SEARCH_SPACE, SEARCH_SPACE_BY_NAME
from trainer._recipe import DataRecipe, Recipe

optuna.logging.set_verbosity(optuna.logging.WARNING)


def space(**narrowed):
    return {**search_bounds(None), **narrowed}


def distributions(bounds):
    return {spec.name: FloatDistribution(*bounds[spec.name], log=spec.log) for spec in SEARCH_SPACE}


def test_partial_config_is_filled_from_the_defaults():
    assert fill_config({"weight_decay": 3e-3}) == {"weight_decay": 3e-3, "l1_ratio": 0.0, "dropout_conv": 0.3, "dropout_dense": 0.5}
    # A filled-in default outside narrowed bounds takes the clipped reference value, never an error.
    assert fill_config({}, space(dropout_conv=(0.4, 0.5)))["dropout_conv"] == 0.4


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"weight_decay": 0.5}, r"enqueue\[1\].weight_decay must be within the study's search bounds \[1e-06, 0.01\], got 0.5"),
        ({"dropout": 0.4}, r"enqueue\[1\] has unknown parameter\(s\) dropout"),
        ({"l1_ratio": "high"}, r"enqueue\[1\].l1_ratio must be a number"),
        ({"dropout_conv": 1.0}, r"enqueue\[1\].dropout_conv must be in \[0, 1\)"),
        ([0.1], r"enqueue\[1\] must be an object"),
    ],
)
def test_bad_enqueued_config_names_the_field_and_enqueues_nothing(config, message):
    study = optuna.create_study(direction="maximize")
    with pytest.raises(ValueError, match=message):
        enqueue_configs(study, [{"weight_decay": 1e-3}, config])
    assert study.get_trials() == []


def test_enqueued_configs_run_first_in_order_after_the_reference():
    bounds = space()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=1))
    enqueue_reference(study, bounds)
    filled = enqueue_configs(study, [{"weight_decay": 1e-3}, {"l1_ratio": 0.5, "dropout_dense": 0.4}], bounds)
    asked = []
    for _ in range(4):
        trial = study.ask(distributions(bounds))
        asked.append((trial.user_attrs.get(STAGE_ATTR), trial.params))
        study.tell(trial, 0.5)
    assert [stage for stage, _ in asked] == ["reference", "enqueued", "enqueued", None]
    assert [params for _, params in asked[1:3]] == filled
    assert filled[1] == {"weight_decay": 1e-4, "l1_ratio": 0.5, "dropout_conv": 0.3, "dropout_dense": 0.4}


def source_study(n=6, gaps=True):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for index in range(n):
        trial = study.ask(distributions(space()))
        if gaps:
            trial.set_user_attr("gap", 0.05 * index)
        trial.set_user_attr("worker", "w1")
        study.tell(trial, 0.3 + 0.01 * index)
    pruned = study.ask(distributions(space()))
    study.tell(pruned, state=TrialState.PRUNED)
    return study


def test_warm_start_seeds_a_compatible_study_with_the_complete_trials():
    source = source_study()
    recipe = Recipe(width=0.25, epochs=1, data=DataRecipe(train_size=200))
    target_recipe = recipe.model_copy(update={"seed": 7})  # another seed: the same objective
    warm = warm_start_trials(source.trials, recipe, target_recipe, source_name="src", target_space=space())
    assert len(warm.trials) == 6 and warm.summary.skipped_out_of_bounds == 0
    target = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    target.add_trials(warm.trials)
    assert [t.value for t in target.trials] == [t.value for t in source.trials if t.state == TrialState.COMPLETE]
    first = target.trials[0]
    assert first.user_attrs[STAGE_ATTR] == "warm_start" and first.user_attrs["warm_start_from"] == {"study": "src", "number": 0}
    assert "worker" not in first.user_attrs
    # The sampler is past its start-up trials: the next point comes from TPE's model of the seeded trials.
    trial = target.ask(distributions(space()))
    assert trial.number == 6 and set(trial.params) == {spec.name for spec in SEARCH_SPACE}


def test_warm_start_keeps_only_trials_inside_narrowed_bounds_and_adapts_distributions():
    source = source_study()
    narrowed = space(weight_decay=(1e-4, 1e-2))
    inside = [t for t in source.trials if t.state == TrialState.COMPLETE and t.params["weight_decay"] >= 1e-4]
    warm = warm_start_trials(source.trials, Recipe(), Recipe(), source_name="src", target_space=narrowed)
    assert len(warm.trials) == len(inside) and warm.summary.skipped_out_of_bounds == 6 - len(inside)
    assert all(t.distributions["weight_decay"] == FloatDistribution(1e-4, 1e-2, log=True) for t in warm.trials)


def test_warm_start_with_max_gap_carries_the_constraint():
    warm = warm_start_trials(source_study().trials, Recipe(), Recipe(), source_name="src", target_space=space(), max_gap=0.1)
    assert [t.constraints for t in warm.trials][:3] == [{"gap": -0.1}, {"gap": pytest.approx(-0.05)}, {"gap": 0.0}]
    assert warm.trials[5].constraints["gap"] == pytest.approx(0.15)
    no_gaps = warm_start_trials(source_study(gaps=False).trials, Recipe(), Recipe(), source_name="src", target_space=space(), max_gap=0.1)
    assert no_gaps.trials == [] and no_gaps.summary.skipped_no_gap == 6


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": "vgg"}, "model"),
        ({"epochs": 20}, "epochs"),
        ({"width": 0.5}, "width"),
        ({"learning_rate": 0.01}, "learning_rate"),
        ({"data": DataRecipe(train_size=500)}, "data.train_size"),
        ({"data": DataRecipe(augment=True)}, "data.augment"),
    ],
)
def test_warm_start_from_another_recipe_is_refused_naming_the_field(change, field):
    with pytest.raises(IncompatibleStudy, match=rf"study 'src' trained under another recipe \({field} "):
        warm_start_trials(source_study().trials, Recipe(), Recipe(**change), source_name="src", target_space=space())


def test_warm_start_from_a_study_without_a_newer_knob_carries_its_trials_at_the_knobs_default():
    source = optuna.create_study(direction="maximize")
    old = {"weight_decay": 1e-3, "l1_ratio": 0.5, "dropout_conv": 0.4}  # searched before dropout_dense existed
    searched = {name: distribution for name, distribution in distributions(space()).items() if name in old}
    source.add_trial(optuna.trial.create_trial(params=old, distributions=searched, value=0.5))
    warm = warm_start_trials(source.trials, Recipe(), Recipe(), source_name="src", target_space=space())
    assert [trial.params for trial in warm.trials] == [{**old, "dropout_dense": SEARCH_SPACE_BY_NAME["dropout_dense"].default}]


def test_warm_start_from_another_search_space_is_refused():
    other = optuna.create_study(direction="maximize")
    other.add_trial(
        optuna.trial.create_trial(params={"x": 0.1}, distributions={"x": FloatDistribution(0, 1)}, value=0.5)
    )
    with pytest.raises(IncompatibleStudy, match=r"has parameters \['x'\]"):
        warm_start_trials(other.trials, Recipe(), Recipe(), source_name="src")
