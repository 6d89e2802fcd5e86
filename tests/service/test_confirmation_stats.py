"""The confirmation stage's plan and statistics (service.confirmation), on known numbers. Instant: no training.

Student's t with 2 degrees of freedom has closed forms, used here as the independent reference:
CDF F(t) = 1/2 + t / (2 sqrt(t**2 + 2)), so the one-sided p of t is (1 - t / sqrt(t**2 + 2)) / 2 and the
quantile of probability q is a * sqrt(2 / (1 - a**2)) with a = 2q - 1.
"""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import FloatDistribution
from pydantic import ValidationError
from scipy import stats

from service.confirmation import (
    CONFIRMS_ATTR,
    REPEAT_ATTR,
    SEED_ATTR,
    SEED_STRIDE,
    ConfirmSpec,
    confirmation_plan,
    is_confirmation,
    mean_interval,
    missing_items,
    paired_test,
    repeat_seed,
    robust_ranges,
    summarize,
    top_configs,
)
from service.models import STAGE_ATTR, TrialStage

DISTRIBUTIONS = {
    "weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
    "dropout_conv": FloatDistribution(0.3, 0.5),
}


def t2_quantile(q: float) -> float:
    a = 2 * q - 1
    return a * math.sqrt(2 / (1 - a * a))


def t2_one_sided_p(t: float) -> float:
    return (1 - t / math.sqrt(t * t + 2)) / 2


def search_trial(number, value, weight_decay, dropout_conv, state=optuna.trial.TrialState.COMPLETE):
    trial = optuna.trial.create_trial(
        state=state,
        value=value if state == optuna.trial.TrialState.COMPLETE else None,
        params={"weight_decay": weight_decay, "dropout_conv": dropout_conv},
        distributions=DISTRIBUTIONS,
        intermediate_values={0: value} if state == optuna.trial.TrialState.PRUNED else None,
    )
    trial.number = number
    return trial


def run(number, item, value, state=optuna.trial.TrialState.COMPLETE):
    """The FrozenTrial a worker leaves after running an enqueued confirmation item."""
    trial = optuna.trial.create_trial(
        state=state,
        value=value if state == optuna.trial.TrialState.COMPLETE else None,
        params=item.params,
        distributions=DISTRIBUTIONS,
        user_attrs=item.user_attrs,
    )
    trial.number = number
    return trial


# --------------------------------------------------------------------------------------------------
# statistics


def test_mean_interval_is_the_student_t_interval():
    result = mean_interval([0.50, 0.52, 0.54])
    assert result.n == 3
    assert result.mean == pytest.approx(0.52)
    assert result.std == pytest.approx(0.02)
    half = t2_quantile(0.975) * 0.02 / math.sqrt(3)
    assert t2_quantile(0.975) == pytest.approx(4.302652729911275)
    assert result.ci_low == pytest.approx(0.52 - half)
    assert result.ci_high == pytest.approx(0.52 + half)
    assert result.ci_high - result.ci_low == pytest.approx(0.0993656, rel=1e-5)


def test_mean_interval_of_one_run_has_no_spread_and_bad_input_names_itself():
    single = mean_interval([0.61])
    assert (single.mean, single.n, single.std, single.ci_low, single.ci_high) == (0.61, 1, None, None, None)
    with pytest.raises(ValueError, match="at least one run"):
        mean_interval([])
    with pytest.raises(ValueError, match="finite"):
        mean_interval([0.5, float("nan")])


def test_paired_test_rejects_a_consistently_worse_config():
    best = {0: 0.58, 1: 0.56, 2: 0.57}
    other = {0: 0.55, 1: 0.54, 2: 0.52}  # differences .03, .02, .05
    result = paired_test(best, other)
    t = (0.1 / 3) / (math.sqrt(7 / 3) * 0.01 / math.sqrt(3))  # mean .0333, sd sqrt(2.333e-4)
    assert result.n_pairs == 3
    assert result.mean_difference == pytest.approx(0.1 / 3)
    assert result.p_value == pytest.approx(t2_one_sided_p(t))
    assert result.p_value == pytest.approx(0.0317, abs=1e-4)
    assert result.significant


def test_paired_test_keeps_a_noisy_difference_as_a_tie():
    best = {0: 0.57, 1: 0.55, 2: 0.59}
    other = {0: 0.56, 1: 0.56, 2: 0.56}  # differences .01, -.01, .03: t = 0.866
    result = paired_test(best, other)
    assert result.p_value == pytest.approx(t2_one_sided_p(0.01 / (0.02 / math.sqrt(3))))
    assert result.p_value == pytest.approx(0.2388, abs=1e-4)
    assert not result.significant


def test_pairing_removes_the_split_to_split_variation():
    # Split 1 is hard for everyone: unpaired, the spread hides the gap; paired, it is clear.
    best = {0: 0.60, 1: 0.50, 2: 0.56}
    other = {0: 0.58, 1: 0.48, 2: 0.54}
    assert paired_test(best, other).significant  # constant difference .02
    unpaired = stats.ttest_ind(list(best.values()), list(other.values()), alternative="greater")
    assert unpaired.pvalue > 0.3


def test_wilcoxon_cannot_reject_with_three_pairs():
    """Why the paired t-test: the signed-rank test's smallest p with n = 3 is 1/8 one-sided."""
    differences = [0.03, 0.02, 0.05]  # all positive: the most extreme sample there is
    assert stats.wilcoxon(differences, alternative="greater").pvalue == pytest.approx(0.125)
    assert stats.wilcoxon(differences).pvalue == pytest.approx(0.25)


def test_paired_test_edge_cases():
    assert paired_test({0: 0.6}, {1: 0.5}).n_pairs == 0  # no shared repeat
    one = paired_test({0: 0.6, 1: 0.6}, {0: 0.5})
    assert (one.n_pairs, one.p_value, one.significant) == (1, None, False)
    assert one.mean_difference == pytest.approx(0.1)
    constant = paired_test({0: 0.6, 1: 0.5}, {0: 0.55, 1: 0.45})
    assert (constant.p_value, constant.significant) == (0.0, True)
    identical = paired_test({0: 0.6, 1: 0.5}, {0: 0.6, 1: 0.5})
    assert (identical.p_value, identical.significant) == (1.0, False)


def test_robust_ranges_span_the_configs():
    ranges = robust_ranges([{"weight_decay": 4e-4, "dropout_conv": 0.3}, {"weight_decay": 2e-4, "dropout_conv": 0.45}])
    assert (ranges["weight_decay"].low, ranges["weight_decay"].high) == (2e-4, 4e-4)
    assert (ranges["dropout_conv"].low, ranges["dropout_conv"].high) == (0.3, 0.45)
    with pytest.raises(ValueError):
        robust_ranges([])


# --------------------------------------------------------------------------------------------------
# scheduling


def test_confirm_spec_defaults_and_validation():
    spec = ConfirmSpec()
    assert (spec.top_k, spec.repeats, spec.enabled, spec.max_trials) == (3, 2, True, 6)
    assert not ConfirmSpec(top_k=0).enabled
    for bad in ({"top_k": -1}, {"repeats": 0}, {"top_k": 3, "extra": 1}):
        with pytest.raises(ValidationError):
            ConfirmSpec.model_validate(bad)


def test_repeat_seed_rule():
    assert repeat_seed(7, 0) == 7
    assert repeat_seed(7, 2) == 7 + 2 * SEED_STRIDE
    assert repeat_seed(2**32 - 1, 1) == SEED_STRIDE - 1  # wraps into [0, 2**32)
    with pytest.raises(ValueError, match="repeat"):
        repeat_seed(0, -1)


def test_top_configs_are_distinct_complete_search_trials():
    trials = [
        search_trial(0, 0.50, 1e-4, 0.30),
        search_trial(1, 0.58, 2e-4, 0.40),
        search_trial(2, 0.58, 2e-4, 0.40),  # a retried copy of trial 1: the same config
        search_trial(3, 0.57, 3e-4, 0.35),
        search_trial(4, 0.0, 5e-3, 0.50, state=optuna.trial.TrialState.PRUNED),
        search_trial(5, 0.0, 5e-3, 0.45, state=optuna.trial.TrialState.FAIL),
        search_trial(6, 0.55, 6e-4, 0.45),
    ]
    assert [trial.number for trial in top_configs(trials, 3)] == [1, 3, 6]
    assert [trial.number for trial in top_configs(trials, 10)] == [1, 3, 6, 0]
    assert top_configs(trials, 0) == []


def test_confirmation_plan_is_paired_and_repeat_major():
    trials = [search_trial(0, 0.50, 1e-4, 0.30), search_trial(1, 0.58, 2e-4, 0.40), search_trial(2, 0.57, 3e-4, 0.35)]
    plan = confirmation_plan(trials, ConfirmSpec(top_k=2, repeats=2), base_seed=5)
    assert [(item.confirms, item.repeat) for item in plan] == [(1, 1), (2, 1), (1, 2), (2, 2)]
    assert plan[0].params == trials[1].params and plan[1].params == trials[2].params
    assert plan[0].user_attrs == {STAGE_ATTR: TrialStage.CONFIRM, CONFIRMS_ATTR: 1, REPEAT_ATTR: 1, SEED_ATTR: repeat_seed(5, 1)}
    assert [item.seed for item in plan] == [repeat_seed(5, 1)] * 2 + [repeat_seed(5, 2)] * 2  # paired across configs
    assert confirmation_plan(trials, ConfirmSpec(top_k=0), base_seed=5) == []
    assert confirmation_plan([], ConfirmSpec(), base_seed=5) == []


def test_enqueueing_is_idempotent():
    trials = [search_trial(0, 0.50, 1e-4, 0.30), search_trial(1, 0.58, 2e-4, 0.40)]
    plan = confirmation_plan(trials, ConfirmSpec(top_k=2, repeats=2), base_seed=0)
    assert missing_items(plan, trials) == plan
    enqueued = [run(2, plan[0], 0.5, state=optuna.trial.TrialState.FAIL), run(3, plan[1], 0.5, state=optuna.trial.TrialState.WAITING)]
    assert missing_items(plan, [*trials, *enqueued]) == plan[2:]  # same params as plan[0], another repeat: still missing


def test_confirmation_runs_are_not_search_candidates():
    trials = [search_trial(0, 0.50, 1e-4, 0.30)]
    (item,) = confirmation_plan(trials, ConfirmSpec(top_k=1, repeats=1), base_seed=0)
    confirmation = run(1, item, 0.99)
    assert is_confirmation(confirmation) and not is_confirmation(trials[0])
    assert [trial.number for trial in top_configs([*trials, confirmation], 3)] == [0]


# --------------------------------------------------------------------------------------------------
# the answer


def _study():
    """Search: trial 1 wins on one split (0.60), trials 3 and 2 follow; the repeats tell another story."""
    search = [
        search_trial(0, 0.50, 1e-4, 0.30),
        search_trial(1, 0.60, 2e-4, 0.40),
        search_trial(2, 0.57, 6e-4, 0.45),
        search_trial(3, 0.58, 4e-4, 0.35),
    ]
    plan = confirmation_plan(search, ConfirmSpec(top_k=3, repeats=2), base_seed=0)
    values = {(1, 1): 0.52, (3, 1): 0.57, (2, 1): 0.55, (1, 2): 0.53, (3, 2): 0.56, (2, 2): 0.555}
    runs = [run(4 + index, item, values[(item.confirms, item.repeat)]) for index, item in enumerate(plan)]
    return search, plan, runs


def test_summary_picks_the_best_mean_with_its_interval_ties_and_ranges():
    search, _, runs = _study()
    result = summarize([*search, *runs], ConfirmSpec(top_k=3, repeats=2))
    assert result.confirmed
    # Means: trial 3 (.58, .57, .56) = .57; trial 2 (.57, .55, .555) = .5583; trial 1 (.60, .52, .53) = .55.
    assert result.best.trial_number == 3
    assert result.best.first_value == 0.58 and result.best.values == {0: 0.58, 1: 0.57, 2: 0.56}
    assert (result.best.n, result.best.mean, result.best.std) == (3, pytest.approx(0.57), pytest.approx(0.01))
    half = t2_quantile(0.975) * 0.01 / math.sqrt(3)
    assert (result.best.ci_low, result.best.ci_high) == (pytest.approx(0.57 - half), pytest.approx(0.57 + half))
    assert [candidate.trial_number for candidate in result.candidates] == [3, 2, 1]
    # vs trial 2: differences .01, .02, .005 -> t = 2.52, p = .064: a tie. vs trial 1: -.02, .05, .03 -> tie.
    assert sorted(tie.trial_number for tie in result.ties) == [1, 2]
    tie2 = next(tie for tie in result.ties if tie.trial_number == 2)
    differences = [0.01, 0.02, 0.005]
    mean = sum(differences) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 2)
    assert tie2.test.p_value == pytest.approx(t2_one_sided_p(mean / (sd / math.sqrt(3))))
    assert (result.robust_ranges["weight_decay"].low, result.robust_ranges["weight_decay"].high) == (2e-4, 6e-4)
    assert (result.robust_ranges["dropout_conv"].low, result.robust_ranges["dropout_conv"].high) == (0.35, 0.45)


def test_a_significantly_worse_config_is_not_a_tie():
    search, plan, runs = _study()
    # Make trial 1 consistently 3 points below trial 3 on every split.
    runs = [
        run(trial.number, next(item for item in plan if item.user_attrs == trial.user_attrs), trial.value - 0.04)
        if trial.user_attrs[CONFIRMS_ATTR] == 1
        else trial
        for trial in runs
    ]
    search[1] = search_trial(1, 0.545, 2e-4, 0.40)
    result = summarize([*search, *runs], ConfirmSpec(top_k=3, repeats=2))
    assert result.best.trial_number == 3
    assert [tie.trial_number for tie in result.ties] == [2]
    assert result.robust_ranges["weight_decay"].low == 4e-4  # trial 1's 2e-4 is not in the range


def test_before_confirmation_ends_the_best_is_the_unconfirmed_leader():
    search, _, runs = _study()
    spec = ConfirmSpec(top_k=3, repeats=2)
    before = summarize(search, spec)
    assert (before.best.trial_number, before.best.n, before.confirmed) == (1, 1, False)
    assert before.best.ci_low is None
    partial = summarize([*search, *runs[:3]], spec)  # repeat 1 done
    assert not partial.confirmed and partial.best.trial_number == 3 and partial.best.n == 2
    failed = runs[:5] + [run(runs[5].number, _study()[1][5], 0.5, state=optuna.trial.TrialState.FAIL)]
    assert not summarize([*search, *failed], spec).confirmed


def test_confirmation_off_answers_with_the_single_best_run():
    search, _, _ = _study()
    result = summarize(search, ConfirmSpec(top_k=0))
    assert (result.best.trial_number, result.best.n, result.confirmed, result.ties) == (1, 1, False, [])
    assert summarize([], ConfirmSpec()) is None
