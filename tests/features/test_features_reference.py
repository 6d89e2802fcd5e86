"""The reference config (the seed's defaults) and the best's margin over it, on real Optuna studies."""

from __future__ import annotations

import optuna
import pytest

from service.features import enqueue_reference, is_reference, margin, reference_config, search_bounds
from service.models import STAGE_ATTR
from trainer import SEARCH_SPACE

TEXTBOOK = {"weight_decay": 1e-4, "l1_ratio": 0.0, "dropout_conv": 0.3, "dropout_dense": 0.5}


def test_reference_is_the_seed_text_defaults_inside_default_bounds():
    reference = reference_config()
    assert reference.params == TEXTBOOK
    assert reference.clipped == {} and reference.note is None


def test_reference_is_clipped_only_where_the_user_narrowed_bounds_and_says_so():
    bounds = search_bounds(None)
    bounds["weight_decay"] = (1e-3, 1e-2)
    bounds["dropout_dense"] = (0.3, 0.4)
    reference = reference_config(bounds)
    assert reference.params == {"weight_decay": 1e-3, "l1_ratio": 0.0, "dropout_conv": 0.3, "dropout_dense": 0.4}
    assert reference.clipped == {"weight_decay": (1e-4, 1e-3), "dropout_dense": (0.5, 0.4)}
    assert "weight_decay 0.0001 -> 0.001" in reference.note and "dropout_dense 0.5 -> 0.4" in reference.note
    # A narrowing that still holds the default clips nothing.
    assert reference_config({**search_bounds(None), "l1_ratio": (0.0, 0.2)}).clipped == {}


def test_reference_reads_optuna_distributions_and_names_a_missing_parameter():
    distributions = {
        spec.name: optuna.distributions.FloatDistribution(spec.low, spec.high, log=spec.log) for spec in SEARCH_SPACE
    }
    assert reference_config(distributions).params == TEXTBOOK
    del distributions["l1_ratio"]
    with pytest.raises(ValueError, match="l1_ratio"):
        reference_config(distributions)


def test_enqueued_reference_is_the_first_trial_asked_with_its_stage():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    enqueue_reference(study)
    trial = study.ask({spec.name: optuna.distributions.FloatDistribution(spec.low, spec.high, log=spec.log) for spec in SEARCH_SPACE})
    assert trial.params == TEXTBOOK
    assert trial.user_attrs[STAGE_ATTR] == "reference" and is_reference(trial)
    study.tell(trial, 0.40)
    later = study.ask()
    assert not is_reference(later)


def test_margin_is_best_minus_reference_with_an_interval_over_repeats():
    single = margin(0.62, 0.55)
    assert single.value == pytest.approx(0.07) and single.low is None and single.high is None
    assert margin(0.6, None) is None and margin(0.6, [float("nan")]) is None
    repeated = margin([0.62, 0.64, 0.63], [0.55, 0.56, 0.54])
    assert repeated.value == pytest.approx(0.08)
    assert repeated.n_best == repeated.n_reference == 3
    assert repeated.low < repeated.value < repeated.high
    assert repeated.low > 0  # the best is clearly above the defaults here
