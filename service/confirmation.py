"""Winners you can trust: the confirmation stage's plan and the statistics of the answer.

A search picks its best on one validation split, where one binomial standard error on a few hundred
images is about two points: the top few configs are often within noise of each other. After the
search's ``n_trials`` have finished, the confirmation stage trains the ``top_k`` distinct configs again,
``repeats`` more times each, unpruned, to the full epoch budget, and the study answers with the config
of the highest *mean*, its 95% interval, the configs that are statistically tied with it and the
parameter ranges those ties span.

Pure functions over Optuna ``FrozenTrial`` objects (number, params, value, state, user_attrs): no
Keras, no database, no service state (the trial rules come from :mod:`service.trials`). The worker plugs them in:

* :func:`confirmation_plan` turns the finished search into the trials to enqueue
  (``study.enqueue_trial(item.params, user_attrs=item.user_attrs)``), repeat by repeat.
* :func:`repeat_seed` is the seed of repeat ``r``: it seeds the validation split, the data order and
  the initialisation of that run, while the training pool (the class-balanced ``train_size`` draw)
  stays the one the recipe's ``seed`` drew, so every split comes from the same images. Repeat 0 is the
  search trial itself (split and init seeded by the recipe's ``seed``), so every config has
  ``n = 1 + repeats`` runs and repeat ``r`` of every config uses the same split: the runs are *paired*
  across configs. The worker reads the seed from the trial's ``seed`` user attribute.
* :func:`missing_items` makes enqueueing the plan idempotent (a worker may die half-way through).
* :func:`summarize` turns all trials (search and confirmation) into :class:`Confirmation`: the best
  with its mean/std/n/interval and the value it was first picked on, its ties and the robust ranges.

Why a paired t-test, one-sided, alpha 0.05 (see :func:`paired_test`): repeat ``r`` of every config
trains and validates on the same split with the same seed, so the split-to-split variation (which
images happen to be in the validation set) is shared and cancels in the per-repeat differences
``d_r = best_r - other_r``; the test is a one-sample t-test of ``mean(d) > 0`` with ``n - 1`` degrees
of freedom. One-sided because the direction is fixed before testing: the best is the config of the
highest mean, so the only question is whether another config is *worse*. Validation accuracy is a
mean over hundreds of images, so its differences are close to normal, which is what the t-test
assumes. Not Wilcoxon's signed-rank test (nor the sign test): with n = 3 there are only 2**3 = 8
equally likely sign patterns, so its smallest p-value is 1/8 = 0.125 one-sided (0.25 two-sided) and it
can never reject at 0.05: every config would always be a tie. No multiple-comparison correction: a
false "tie" is the cautious error (it widens the robust ranges), and a correction would only make
ties more frequent.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any

import numpy as np
import optuna
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from service.models import STAGE_ATTR, TrialStage
from service.trials import is_feasible, is_search_trial
from trainer import Integer, Number  # an int that refuses booleans, as every integer of the spec; a float that does too
from trainer._best import ParamRange, RunStats, TiedConfig, Uncertainty  # the one uncertainty model (trainer owns it)

__all__ = [
    "ALPHA",
    "CONFIDENCE",
    "CONFIRMS_ATTR",
    "REPEAT_ATTR",
    "SEED_ATTR",
    "SEED_STRIDE",
    "TEST_DESCRIPTION",
    "ConfigResult",
    "ConfirmSpec",
    "Confirmation",
    "ConfirmationTrial",
    "PairedTest",
    "ParamRange",
    "RunStats",
    "Tie",
    "Uncertainty",
    "confirmation_plan",
    "is_confirmation",
    "mean_interval",
    "missing_items",
    "paired_test",
    "repeat_seed",
    "robust_ranges",
    "search_rank",
    "summarize",
    "top_configs",
]

#: User attributes of a confirmation trial besides its stage (set by ``enqueue_trial``; the dashboard shows them).
CONFIRMS_ATTR = "confirms"  # number of the search trial whose config this run repeats
REPEAT_ATTR = "repeat"  # 1..repeats (repeat 0 is the search trial itself)
SEED_ATTR = "seed"  # repeat_seed(recipe seed, repeat): split, data order and initialisation

#: Repeat ``r`` of a study seeded ``s`` uses seed ``(s + r * SEED_STRIDE) mod 2**32`` (a prime stride, so
#: the repeats of nearby study seeds do not collide with each other's first repeats).
SEED_STRIDE = 1_000_033
_SEED_MODULUS = 2**32

ALPHA = 0.05
CONFIDENCE = 0.95
TEST_DESCRIPTION = (
    "paired t-test on the per-repeat differences (repeat r of every config shares its validation split "
    "and seed), one-sided (is the other config worse than the best?), alpha 0.05; not Wilcoxon: with n = 3 "
    "its smallest p-value is 0.125 one-sided (0.25 two-sided), so it can never reject"
)

#: Differences closer than this are equal (accuracies on k images are multiples of 1/k, far coarser).
_SPREAD_TOLERANCE = 1e-9

_FINISHED_OK = optuna.trial.TrialState.COMPLETE


class ConfirmSpec(BaseModel):
    """The study spec's ``confirm`` block: how many top configs to re-train and how often."""

    model_config = ConfigDict(extra="forbid")

    top_k: Integer = Field(3, ge=0, le=20, description="Distinct top configs re-trained after the search; 0 turns confirmation off.")
    repeats: Integer = Field(
        2, ge=1, le=10, description="Extra runs of each, each with its own seed for the validation split, data order and initialisation."
    )

    max_hours: Annotated[Number, Field(gt=0, allow_inf_nan=False)] | None = Field(
        None,
        description="Trial-hours the confirmation stage may use (the sum of its repeats' durations; null: no bound). "
        "Once spent no repeat starts, running ones finish, the repeats not started are dropped (fail_reason "
        "confirm-budget) and the study completes with the runs it has.",
    )

    @property
    def enabled(self) -> bool:
        return self.top_k > 0

    @property
    def max_trials(self) -> int:
        """The most confirmation trials a study runs (fewer when the search has fewer distinct configs)."""
        return self.top_k * self.repeats


# --------------------------------------------------------------------------------------------------
# Scheduling
# --------------------------------------------------------------------------------------------------


def repeat_seed(base_seed: int, repeat: int) -> int:
    """The seed of repeat ``repeat`` of a study seeded ``base_seed``; repeat 0 is the study's own seed."""
    if isinstance(repeat, bool) or not isinstance(repeat, (int, np.integer)) or repeat < 0:
        raise ValueError(f"repeat must be an int >= 0, got {repeat!r}")
    if isinstance(base_seed, bool) or not isinstance(base_seed, (int, np.integer)) or base_seed < 0:
        raise ValueError(f"base_seed must be an int >= 0, got {base_seed!r}")
    return int((base_seed + repeat * SEED_STRIDE) % _SEED_MODULUS)


def is_confirmation(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether ``trial`` is a confirmation run (rather than a search trial)."""
    return trial.user_attrs.get(STAGE_ATTR) == TrialStage.CONFIRM


def _candidate(trial: optuna.trial.FrozenTrial) -> bool:
    """A complete, finite, feasible *search* trial (the one counting rule,
    :func:`service.trials.is_search_trial`: imported warm-start trials and confirmation runs are not)."""
    return (
        trial.state == _FINISHED_OK
        and is_search_trial(trial)
        and trial.value is not None
        and math.isfinite(trial.value)
        and is_feasible(trial)
    )


def _with_references(trials: Sequence[optuna.trial.FrozenTrial], top: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """``top`` plus the study's reference config (its best complete trial) when it is not among them: it is
    confirmed like a top config, so the margin over it has an interval."""
    keys = {_params_key(trial.params) for trial in top}
    references = sorted(
        (trial for trial in trials if _candidate(trial) and trial.user_attrs.get(STAGE_ATTR) == TrialStage.REFERENCE),
        key=search_rank,
    )
    extra = []
    for trial in references:
        key = _params_key(trial.params)
        if key not in keys:
            keys.add(key)
            extra.append(trial)
    return [*top, *extra]


def search_rank(trial: optuna.trial.FrozenTrial) -> tuple[float, int]:
    """The order of complete search trials: the higher value first, ties to the lower trial number (whichever
    finished first, so the order never depends on timing). The one rule for ties: the leader, the best and the kept models
    (:func:`service.features.kept_models`) all follow it through :func:`top_configs`."""
    return -trial.value, trial.number


def _params_key(params: Mapping[str, float]) -> tuple:
    """Identity of a config: parameter values to 12 significant digits (JSON round trips are exact
    for floats, but a re-queued copy and its original must count as one config whatever the store)."""
    return tuple(sorted((name, float(f"{float(value):.12g}")) for name, value in params.items()))


def top_configs(trials: Iterable[optuna.trial.FrozenTrial], top_k: int) -> list[optuna.trial.FrozenTrial]:
    """The ``top_k`` complete search trials of distinct configs, best value first (ties: lower number first).

    Confirmation runs, warm-start imports, infeasible trials (Optuna constraints > 0), pruned, failed,
    running and waiting trials and non-finite values are ignored;
    of several complete trials with the same params (a retried copy) the best-valued one represents it.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0, got {top_k!r}")
    if top_k == 0:
        return []
    candidates = [trial for trial in trials if _candidate(trial)]
    candidates.sort(key=search_rank)
    chosen: list[optuna.trial.FrozenTrial] = []
    seen: set[tuple] = set()
    for trial in candidates:
        key = _params_key(trial.params)
        if key in seen:
            continue
        seen.add(key)
        chosen.append(trial)
        if len(chosen) == top_k:
            break
    return chosen


@dataclasses.dataclass(frozen=True)
class ConfirmationTrial:
    """One trial to enqueue: ``study.enqueue_trial(item.params, user_attrs=item.user_attrs)``."""

    params: dict[str, float]
    user_attrs: dict[str, Any]

    @property
    def confirms(self) -> int:
        return int(self.user_attrs[CONFIRMS_ATTR])

    @property
    def repeat(self) -> int:
        return int(self.user_attrs[REPEAT_ATTR])

    @property
    def seed(self) -> int:
        return int(self.user_attrs[SEED_ATTR])


def confirmation_plan(
    trials: Iterable[optuna.trial.FrozenTrial], confirm: ConfirmSpec, base_seed: int
) -> list[ConfirmationTrial]:
    """The confirmation trials of a finished search, in the order to enqueue them.

    Repeat-major (repeat 1 of every config, then repeat 2, ...), so that a stage cut short still has
    complete pairs. Repeat ``r`` of every config carries seed ``repeat_seed(base_seed, r)``. The study's
    reference config (stage "reference") is repeated too when it is not among the top. Empty when
    ``confirm.top_k`` is 0 or no search trial completed.
    """
    if not confirm.enabled:
        return []
    trials = list(trials)
    top = _with_references(trials, top_configs(trials, confirm.top_k))
    return [
        ConfirmationTrial(
            params=dict(trial.params),
            user_attrs={
                STAGE_ATTR: TrialStage.CONFIRM,
                CONFIRMS_ATTR: trial.number,
                REPEAT_ATTR: repeat,
                SEED_ATTR: repeat_seed(base_seed, repeat),
            },
        )
        for repeat in range(1, confirm.repeats + 1)
        for trial in top
    ]


def missing_items(plan: Sequence[ConfirmationTrial], trials: Iterable[optuna.trial.FrozenTrial]) -> list[ConfirmationTrial]:
    """The items of ``plan`` not yet in the study (no trial of any state with their ``confirms`` and ``repeat``).

    Makes enqueueing idempotent: a worker that died between marking the study ``confirming`` and
    enqueueing the whole plan leaves the rest to the next worker, which enqueues only what is missing.
    (Not ``enqueue_trial(skip_if_exists=True)``: it compares params only, and every repeat of a config has
    the same params.) A retried trial (Optuna's retry callbacks copy the user attributes) counts as present.
    """
    present = {
        (trial.user_attrs.get(CONFIRMS_ATTR), trial.user_attrs.get(REPEAT_ATTR)) for trial in trials if is_confirmation(trial)
    }
    return [item for item in plan if (item.confirms, item.repeat) not in present]


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> RunStats:
    """Mean, std (ddof=1) and the two-sided Student-t interval ``mean +- t(1-(1-c)/2, n-1) * std/sqrt(n)``."""
    data = np.asarray([float(value) for value in values], dtype=np.float64)
    if data.size == 0:
        raise ValueError("values must hold at least one run")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"values must be finite, got {values!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    mean = float(data.mean())
    if data.size == 1:
        return RunStats(mean=mean, std=None, n=1, ci_low=None, ci_high=None, confidence=confidence)
    std = float(data.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, data.size - 1)) * std / math.sqrt(data.size)
    return RunStats(mean=mean, std=std, n=int(data.size), ci_low=mean - half, ci_high=mean + half, confidence=confidence)


class PairedTest(BaseModel):
    """The paired comparison of the best with another config on the repeats both have."""

    n_pairs: int
    mean_difference: float | None = Field(description="mean(best_r - other_r) over the shared repeats.")
    p_value: float | None = Field(description="One-sided p of 'the other is worse'; null with fewer than 2 pairs.")
    significant: bool = Field(description="p_value < alpha: the other config is worse than the best.")


def paired_test(best: Mapping[int, float], other: Mapping[int, float], alpha: float = ALPHA) -> PairedTest:
    """One-sided paired t-test of ``best > other`` on the repeats present in both (repeat -> value).

    Fewer than 2 pairs cannot be tested (not significant). Identical differences (zero spread, up to rounding) are
    significant exactly when their mean is positive.
    """
    shared = sorted(set(best) & set(other))
    if not shared:
        return PairedTest(n_pairs=0, mean_difference=None, p_value=None, significant=False)
    differences = np.asarray([float(best[r]) - float(other[r]) for r in shared], dtype=np.float64)
    mean_difference = float(differences.mean())
    if differences.size < 2:
        return PairedTest(n_pairs=1, mean_difference=mean_difference, p_value=None, significant=False)
    if float(np.ptp(differences)) <= _SPREAD_TOLERANCE:  # e.g. .60-.55 vs .50-.45: equal but for rounding
        p_value = 0.0 if mean_difference > _SPREAD_TOLERANCE else 1.0
    else:
        result = stats.ttest_rel([best[r] for r in shared], [other[r] for r in shared], alternative="greater")
        p_value = float(result.pvalue)
    return PairedTest(n_pairs=int(differences.size), mean_difference=mean_difference, p_value=p_value, significant=p_value < alpha)


def robust_ranges(configs: Iterable[Mapping[str, float]]) -> dict[str, ParamRange]:
    """Per parameter, the interval spanned by the given configs (the best and its ties)."""
    ranges: dict[str, ParamRange] = {}
    for params in configs:
        for name, value in params.items():
            value = float(value)
            if name in ranges:
                ranges[name] = ParamRange(low=min(ranges[name].low, value), high=max(ranges[name].high, value))
            else:
                ranges[name] = ParamRange(low=value, high=value)
    if not ranges:
        raise ValueError("robust_ranges needs at least one config")
    return ranges


class ConfigResult(RunStats):
    """One candidate config: its runs (repeat -> value; repeat 0 is the search trial) and their statistics."""

    trial_number: int = Field(description="The search trial that first ran this config.")
    params: dict[str, float]
    first_value: float = Field(description="The single-run value the config was first picked on (its search trial).")
    values: dict[int, float] = Field(description="Validation value per repeat; 0 is the search trial.")


class Tie(TiedConfig):
    """A config whose paired difference from the best is not significant: the best config's
    :class:`~trainer._best.TiedConfig` plus the whole test (``p_value`` is the test's)."""

    test: PairedTest


class Confirmation(BaseModel):
    """The study's answer: the best by mean over its runs, its ties and the robust ranges."""

    best: ConfigResult
    confirmed: bool = Field(
        description="Every candidate has all its runs; false while confirmation runs (the best is the current leader) "
        "or when it is off."
    )
    ties: list[Tie]
    robust_ranges: dict[str, ParamRange]
    candidates: list[ConfigResult] = Field(description="Every candidate, highest mean first.")
    test: str = TEST_DESCRIPTION
    alpha: float = ALPHA

    def uncertainty(self) -> Uncertainty:
        """The best's :class:`~trainer._best.Uncertainty` (what the stored best config, ``GET .../best``,
        the export and the provenance carry): its :class:`RunStats`, ``confirmed``, its ties, the robust
        ranges and the test."""
        return Uncertainty.model_validate(
            {
                **self.best.model_dump(include=set(Uncertainty.model_fields)),
                "confirmed": self.confirmed,
                "ties": [tie.model_dump() for tie in self.ties],
                "robust_ranges": self.robust_ranges,
                "test": self.test,
                "candidates": len(self.candidates),  # how many configs the answer compared (the best included)
            }
        )


def _runs(trials: Sequence[optuna.trial.FrozenTrial], candidates: list[optuna.trial.FrozenTrial]) -> dict[int, dict[int, float]]:
    runs = {trial.number: {0: float(trial.value)} for trial in candidates}
    for trial in trials:
        if not is_confirmation(trial) or trial.state != _FINISHED_OK or trial.value is None or not math.isfinite(trial.value):
            continue
        confirms = trial.user_attrs.get(CONFIRMS_ATTR)
        repeat = trial.user_attrs.get(REPEAT_ATTR)
        if confirms in runs and isinstance(repeat, int) and repeat >= 1:
            runs[confirms].setdefault(repeat, float(trial.value))  # a retried repeat counts once
    return runs


def summarize(
    trials: Iterable[optuna.trial.FrozenTrial],
    confirm: ConfirmSpec,
    *,
    alpha: float = ALPHA,
    confidence: float = CONFIDENCE,
) -> Confirmation | None:
    """The best, its ties and robust ranges from a study's trials (search and confirmation); None before any
    search trial completed.

    The candidates are the ``top_k`` distinct configs of the search and the reference config (the single
    best with confirmation off); the best is the candidate of the highest mean over its runs (ties broken by
    more runs, then the higher first value, then the lower trial number). Valid at any time: before
    the confirmation runs have all finished, ``confirmed`` is false and the best is the current leader.
    """
    trials = list(trials)
    candidates = top_configs(trials, max(confirm.top_k, 1))
    if confirm.enabled:
        candidates = _with_references(trials, candidates)
    if not candidates:
        return None
    runs = _runs(trials, candidates)
    results = []
    for trial in candidates:
        values = runs[trial.number]
        summary = mean_interval([values[r] for r in sorted(values)], confidence)
        results.append(
            ConfigResult(
                **summary.model_dump(),
                trial_number=trial.number,
                params={name: float(value) for name, value in trial.params.items()},
                first_value=float(trial.value),
                values=dict(sorted(values.items())),
            )
        )
    results.sort(key=lambda result: (-result.mean, -result.n, -result.first_value, result.trial_number))
    best = results[0]
    ties = []
    for other in results[1:]:
        test = paired_test(best.values, other.values, alpha)
        if not test.significant:
            ties.append(Tie(trial_number=other.trial_number, params=other.params, mean=other.mean, n=other.n, test=test))
    confirmed = confirm.enabled and all(result.n == 1 + confirm.repeats for result in results)
    return Confirmation(
        best=best,
        confirmed=confirmed,
        ties=ties,
        robust_ranges=robust_ranges([best.params, *(tie.params for tie in ties)]),
        candidates=results,
        alpha=alpha,
    )



