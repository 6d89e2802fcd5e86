"""Configs tried first (``enqueue``) and another study's trials as a head start (``warm_start_from``).

Pure functions: they read specs and Optuna ``FrozenTrial`` objects and return what to hand to
``study.enqueue_trial`` / ``study.add_trials``; ``ValueError`` (a 422 at the API) explains a refusal.

When is another study's experience meaningful here? A trial's value is the validation accuracy a
network reaches *under a training recipe*; the sampler compares values across trials (TPE splits
them at a quantile into good and bad). So a trial can seed this study only if it measured the same
objective:

* the same ``model``, ``width``, ``epochs``, ``batch_size``, ``learning_rate`` and data recipe
  (``train_size``, ``val_fraction``, ``augment``). A longer budget or a wider network reaches higher
  accuracies (old trials would all fall in TPE's "bad" group, pushing the search away from them) and
  needs more regularization (capacity and training length drive overfitting), so the optimum itself
  moves: such trials are refused, not rescaled.
* the ``seed`` may differ: it re-draws the validation split and the initialisation, i.e. noise
  around the same objective.
* the same parameter names and scales (each a float distribution with the same ``log`` flag); a
  knob added since the source study ran takes its default (a new knob's default is the network as it
  was before the knob existed). The bounds may differ: trials inside this study's bounds are kept (their distributions replaced by
  this study's, as ``add_trials`` requires), trials outside are dropped and counted.

Only COMPLETE trials with a finite value are carried over, one row per config, marked ``stage="warm_start"``
and ``warm_start_from={"study", "number", "runs"}``: a config the source's confirmation stage repeated
carries the mean of its runs (its search trial and its repeats), never one row per run. With ``max_gap`` set, each carries its gap constraint
(``gap - max_gap``) so the sampler sees its feasibility; one without a recorded gap is dropped (its
feasibility here is unknown).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from service.confirmation import CONFIRMS_ATTR, is_confirmation
from service.features._bounds import search_bounds
from service.features._constraints import GAP_CONSTRAINT, gap_constraint
from service.features._reference import reference_config
from service.features._schemas import WarmStartOut
from service.models import STAGE_ATTR, TrialStage
from trainer import SEARCH_SPACE, SEARCH_SPACE_BY_NAME

__all__ = [
    "RECIPE_FIELDS",
    "WARM_START_ATTR",
    "IncompatibleStudy",
    "WarmStart",
    "check_compatible",
    "enqueue_configs",
    "fill_config",
    "warm_start_trials",
]


#: The recipe fields that define the objective (see the module docstring); dotted names reach into ``data``.
#: ``trainer._recipe.Recipe``'s fields minus ``seed``.
RECIPE_FIELDS: tuple[str, ...] = (
    "model",
    "width",
    "epochs",
    "batch_size",
    "learning_rate",
    "data.train_size",
    "data.val_fraction",
    "data.augment",
)


class IncompatibleStudy(ValueError):
    """The source study's trials measured another objective (a 422 at the API)."""


# --------------------------------------------------------------------------------------------------
# enqueue


def fill_config(partial: Mapping[str, Any], space: Any = None, *, what: str = "config") -> dict[str, float]:
    """A full config from a partial one, inside the study's bounds.

    Missing parameters take the reference config (the defaults, clipped into the bounds: a filled-in
    value is never out of bounds); given ones must be known, numbers, valid for the parameter and
    inside the study's ``[low, high]``. ``ValueError`` names the field as ``{what}.{name}``.
    """
    if not isinstance(partial, Mapping):
        raise ValueError(f"{what} must be an object of parameter values, got {type(partial).__name__}")
    unknown = sorted(set(partial) - set(SEARCH_SPACE_BY_NAME))
    if unknown:
        shown = ", ".join(name if len(name) <= 40 else name[:40] + "..." for name in unknown[:3])
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""  # an answer never echoes a whole body
        raise ValueError(f"{what} has unknown parameter(s) {shown}{more}; expected some of {[s.name for s in SEARCH_SPACE]}")
    bounds = search_bounds(space)
    params = dict(reference_config(bounds).params)
    for name, value in partial.items():
        spec = SEARCH_SPACE_BY_NAME[name]
        value = spec.check(value, f"{what}.{name}")
        low, high = bounds[name]
        if not low <= value <= high:
            raise ValueError(f"{what}.{name} must be within the study's search bounds [{low:g}, {high:g}], got {value:g}")
        params[name] = value
    return params


def enqueue_configs(study: optuna.Study, configs: Sequence[Mapping[str, Any]], space: Any = None) -> list[dict[str, float]]:
    """Validate every config first (nothing is enqueued if one is bad), then enqueue them in order.

    Call after :func:`~service.features.enqueue_reference`, so the reference still runs first.
    """
    filled = [fill_config(config, space, what=f"enqueue[{index}]") for index, config in enumerate(configs)]
    for params in filled:
        study.enqueue_trial(params, user_attrs={STAGE_ATTR: TrialStage.ENQUEUED})
    return filled


# --------------------------------------------------------------------------------------------------
# warm start


#: The study system attribute recording what ``warm_start_from`` added (a :class:`WarmStartOut`).
WARM_START_ATTR = "regsearch:warm_start"


@dataclasses.dataclass(frozen=True)
class WarmStart:
    """Trials to ``study.add_trials``, and what was added and left out (stored as :data:`WARM_START_ATTR`)."""

    trials: list[FrozenTrial]
    summary: WarmStartOut


def _field(spec: Any, dotted: str) -> Any:
    value = spec
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else getattr(value, part)
    return value


def check_compatible(source_spec: Any, target_spec: Any, *, source_name: str = "source") -> None:
    """``IncompatibleStudy`` naming every recipe field that differs (specs: StudySpec/Recipe objects or dicts)."""
    differences = []
    for name in RECIPE_FIELDS:
        before, after = _field(source_spec, name), _field(target_spec, name)
        if before != after:
            differences.append(f"{name} {before!r} != {after!r}")
    if differences:
        raise IncompatibleStudy(
            f"warm_start_from: study {source_name!r} trained under another recipe ({'; '.join(differences)}); "
            "its accuracies measure another objective and cannot seed this study"
        )


def warm_start_trials(
    source_trials: Iterable[FrozenTrial],
    source_spec: Any,
    target_spec: Any,
    *,
    source_name: str,
    target_space: Any = None,
    max_gap: float | None = None,
) -> WarmStart:
    """The source study's COMPLETE trials, ready for ``target_study.add_trials(result.trials)``.

    ``target_space``: the target's search space (any shape :func:`search_bounds` reads; default
    ``target_spec.search_space``, else the default bounds). Raises :class:`IncompatibleStudy` when the recipes differ or a
    trial's parameters do not match the declared search space (names, float, log scale).
    """
    check_compatible(source_spec, target_spec, source_name=source_name)
    if target_space is None:  # the spec's own bounds; a bare Recipe has none: the default bounds
        target_space = target_spec.get("search_space") if isinstance(target_spec, Mapping) else getattr(target_spec, "search_space", None)
    bounds = search_bounds(target_space)
    distributions = {
        spec.name: FloatDistribution(bounds[spec.name][0], bounds[spec.name][1], log=spec.log) for spec in SEARCH_SPACE
    }
    source_trials = [trial for trial in source_trials
                     if trial.state == TrialState.COMPLETE and trial.value is not None and math.isfinite(trial.value)]
    # One row per config: a confirmation repeat re-trains a search trial's config with another seed, so its
    # value joins that trial's (their mean), never a row of its own (the sampler would see one config as several).
    repeats: dict[int, list[float]] = {}
    for trial in source_trials:
        if is_confirmation(trial):
            repeats.setdefault(trial.user_attrs.get(CONFIRMS_ATTR), []).append(float(trial.value))
    trials: list[FrozenTrial] = []
    out_of_bounds = no_gap = 0
    for trial in source_trials:
        if is_confirmation(trial):
            continue
        runs = [float(trial.value), *repeats.get(trial.number, [])]
        _check_params(trial, source_name)
        # A knob the source study did not search (it did not exist then) ran at its default.
        params = {spec.name: trial.params.get(spec.name, spec.default) for spec in SEARCH_SPACE}
        if not all(distributions[name].low <= value <= distributions[name].high for name, value in params.items()):
            out_of_bounds += 1
            continue
        constraints = None
        if max_gap is not None:
            gap = trial.user_attrs.get("gap")
            if gap is None or not math.isfinite(gap):
                no_gap += 1
                continue
            constraints = {GAP_CONSTRAINT: gap_constraint(gap, max_gap)}
        user_attrs = {
            **{k: v for k, v in trial.user_attrs.items() if k not in (STAGE_ATTR, "worker")},
            STAGE_ATTR: TrialStage.WARM_START,
            "warm_start_from": {"study": source_name, "number": trial.number, "runs": len(runs)},
        }
        trials.append(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE,
                value=sum(runs) / len(runs),
                params=params,
                distributions=dict(distributions),
                user_attrs=user_attrs,
                intermediate_values=dict(trial.intermediate_values),
                constraints=constraints,
            )
        )
    summary = WarmStartOut(source=source_name, trials=len(trials), skipped_out_of_bounds=out_of_bounds, skipped_no_gap=no_gap)
    return WarmStart(trials=trials, summary=summary)


def _check_params(trial: FrozenTrial, source_name: str) -> None:
    names = set(trial.params)
    expected = set(SEARCH_SPACE_BY_NAME)
    if not names or not names <= expected:  # a knob it lacks takes its default (see warm_start_trials)
        raise IncompatibleStudy(
            f"warm_start_from: trial {trial.number} of {source_name!r} has parameters {sorted(names)}, "
            f"this study searches {sorted(expected)}"
        )
    for name, distribution in trial.distributions.items():
        spec = SEARCH_SPACE_BY_NAME[name]
        if not isinstance(distribution, FloatDistribution) or distribution.log != spec.log:
            raise IncompatibleStudy(
                f"warm_start_from: parameter {name!r} of {source_name!r} was searched as {distribution!r}; "
                f"here it is a float{' on a log scale' if spec.log else ''}"
            )
