"""The issue-11 spec fields as a mixin: a StudySpec-like model built from Recipe + StudyFeatures."""

from __future__ import annotations

import optuna
import pytest
from pydantic import Field, ValidationError
from optuna.distributions import FloatDistribution

from service.features import MarginOut, StudyFeatures, enqueue_reference, margin_from_trials, record_gap_constraint
from service.schemas import SearchSpace
from trainer import SEARCH_SPACE
from trainer._recipe import Recipe

optuna.logging.set_verbosity(optuna.logging.WARNING)


class Spec(Recipe, StudyFeatures):
    """How issue 8's StudySpec will take the fields: by inheritance."""

    name: str = "s"
    search_space: SearchSpace = Field(default_factory=SearchSpace)  # type: ignore[valid-type]


def test_defaults_and_full_configs_stored():
    spec = Spec.model_validate({"enqueue": [{"weight_decay": 1e-3}], "max_gap": 0.1})
    assert spec.reference is True and spec.warm_start_from is None and spec.max_gap == 0.1
    assert spec.enqueue == [{"weight_decay": 1e-3, "l1_ratio": 0.0, "dropout_conv": 0.3, "dropout_dense": 0.5}]
    assert Spec.model_validate(spec.model_dump()) == spec  # round-trips through the stored JSON


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"search_space": {"weight_decay": {"low": 1e-3, "high": 1e-2}}, "enqueue": [{"weight_decay": 1e-4}]},
            r"enqueue\[0\].weight_decay must be within the study's search bounds \[0.001, 0.01\]",
        ),
        ({"enqueue": [{"dropout_conv": 0.3}, {"l2": 1e-4}]}, r"enqueue\[1\] has unknown parameter\(s\) l2"),
        ({"max_gap": 0}, "max_gap"),
        ({"warm_start_from": "Not A Slug"}, "warm_start_from must be a study name"),
        ({"warm_start_from": "s"}, "warm_start_from must name another study"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_bad_fields_are_validation_errors_naming_them(body, message):
    with pytest.raises(ValidationError, match=message):
        Spec.model_validate(body)


def test_margin_from_trials_uses_the_reference_and_the_best_feasible_own_trial():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    distributions = {spec.name: FloatDistribution(spec.low, spec.high, log=spec.log) for spec in SEARCH_SPACE}
    assert margin_from_trials(study.trials) is None
    enqueue_reference(study)
    for value, gap in [(0.50, 0.05), (0.70, 0.30), (0.58, 0.02)]:  # reference, infeasible, feasible
        trial = study.ask(distributions)
        record_gap_constraint(trial, gap, max_gap=0.1)
        study.tell(trial, value)
    result = margin_from_trials(study.trials)
    assert result.value == pytest.approx(0.08) and result.reference == 0.5 and result.best == 0.58
    assert isinstance(result, MarginOut) and result.value == pytest.approx(0.08)
    assert margin_from_trials(study.trials, best_value=0.6).value == pytest.approx(0.1)
