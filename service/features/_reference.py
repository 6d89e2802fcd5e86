"""The defaults as a yardstick: the reference config enqueued first, and the best's margin over it.

The reference config is the seed text's regularization (L2 weight decay 1e-4, l1_ratio 0, dropout
0.3 after the pooling blocks and 0.5 before the classifier): the ``default`` of each parameter in
:data:`trainer.SEARCH_SPACE`, so it is declared once, there. A study measures it as its first trial
(enqueued with ``user_attrs={"stage": "reference"}``) and never prunes it; the study's best is then
reported with its margin over it (best minus reference, in the study's metric).

The defaults lie inside the default bounds, so clipping only happens when the user narrowed the
bounds; the note says which parameter moved and why, so the margin is not read as "over the
textbook" when it is over a clipped neighbour of it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from service.features._bounds import search_bounds
from service.features._constraints import best_feasible
from service.features._schemas import MarginOut, ReferenceOut
from service.models import STAGE_ATTR, TrialStage
from trainer import SEARCH_SPACE

__all__ = [
    "MarginOut",
    "ReferenceOut",
    "enqueue_reference",
    "is_reference",
    "margin",
    "margin_from_trials",
    "reference_config",
]


def reference_config(space: Any = None) -> ReferenceOut:
    """The seed's defaults (``ParamSpec.default``), each clipped into the study's ``[low, high]``.

    ``space``: the study's search space in any shape :func:`search_bounds` reads (None: defaults).
    """
    bounds = search_bounds(space)
    params: dict[str, float] = {}
    clipped: dict[str, tuple[float, float]] = {}
    for spec in SEARCH_SPACE:
        low, high = bounds[spec.name]
        value = min(max(spec.default, low), high)
        params[spec.name] = value
        if value != spec.default:
            clipped[spec.name] = (spec.default, value)
    note = None
    if clipped:
        parts = [f"{name} {default:g} -> {used:g}" for name, (default, used) in clipped.items()]
        note = "reference clipped into the study's narrowed search bounds: " + ", ".join(parts)
    return ReferenceOut(params=params, clipped=clipped, note=note)


def enqueue_reference(study: Any, space: Any = None) -> ReferenceOut:
    """Enqueue the reference as the study's next waiting trial (call once, right after creating the study)."""
    reference = reference_config(space)
    user_attrs: dict[str, Any] = {STAGE_ATTR: TrialStage.REFERENCE}
    if reference.note:
        user_attrs["reference_note"] = reference.note
    study.enqueue_trial(reference.params, user_attrs=user_attrs)
    return reference


def is_reference(trial: Any) -> bool:
    """Whether ``trial`` (Trial or FrozenTrial) is the study's reference run: the worker never prunes it."""
    return trial.user_attrs.get(STAGE_ATTR) == TrialStage.REFERENCE


def margin(best: float | Sequence[float], reference: float | Sequence[float], *, confidence: float = 0.95) -> MarginOut | None:
    """The best's margin over the reference: mean(best) - mean(reference).

    Each side is one value or the values of its repeats (issue 10's confirmation stage). With two or
    more values on both sides, ``low``/``high`` give the Welch t interval of the difference of means.
    Returns None when either side has no finite value yet (the reference has not completed).
    """
    best_values = _finite(best)
    reference_values = _finite(reference)
    if not best_values or not reference_values:
        return None
    best_mean, reference_mean = statistics.fmean(best_values), statistics.fmean(reference_values)
    low = high = None
    if len(best_values) >= 2 and len(reference_values) >= 2:
        from scipy import stats

        if statistics.variance(best_values) + statistics.variance(reference_values) > 0:
            test = stats.ttest_ind(best_values, reference_values, equal_var=False)
            interval = test.confidence_interval(confidence_level=confidence)
            low, high = float(interval.low), float(interval.high)
        else:
            low = high = best_mean - reference_mean
    return MarginOut(
        value=best_mean - reference_mean,
        best=best_mean,
        reference=reference_mean,
        n_best=len(best_values),
        n_reference=len(reference_values),
        low=low,
        high=high,
    )


def margin_from_trials(trials: Any, best_value: float | Sequence[float] | None = None, *, maximize: bool = True) -> MarginOut | None:
    """The margin from a study's trials: reference = its COMPLETE ``stage="reference"`` trials' values.

    ``best_value``: the best's value(s) as the service records them; None: the best feasible COMPLETE
    trial the study itself ran (warm-start trials excluded).
    """
    trials = list(trials)
    reference = [t.value for t in trials if is_reference(t) and t.state.name == "COMPLETE"]
    if best_value is None:
        own = [t for t in trials if t.user_attrs.get(STAGE_ATTR) != TrialStage.WARM_START]
        best = best_feasible(own, maximize=maximize)
        best_value = best.value if best is not None else None
    return margin(best_value, reference)


def _finite(values: float | Sequence[float] | None) -> list[float]:
    if values is None:
        return []
    if isinstance(values, (int, float)):
        values = [values]
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]
