"""The ``max_gap`` constraint, through Optuna's constraints support.

Optuna 5 records a trial's constraints with ``trial.set_constraint(key, value)`` (system attribute
``"constraints:<key>"``, read back as ``FrozenTrial.constraints``); a trial is feasible when every
value is <= 0. TPE reads them directly (infeasible trials go to its "bad" group) and
``study.best_trial`` only considers feasible trials. The sampler's ``constraints_func`` argument
(the older convention: a user attribute ``constraint`` read back by a function, stored under the
``"constraints"`` system attribute, ``optuna.study._constrained_optimization._CONSTRAINTS_KEY``) is
deprecated since Optuna 5.0 (FutureWarning); :func:`constraints_func` is kept for samplers that
still need it, reading the same user attribute the worker records.

The constraint is ``gap - max_gap`` with ``gap`` the final generalization gap measured in
inference mode on a fixed training sample (:func:`trainer._gap.measure_gap`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from service.trials import CONSTRAINT_ATTR, is_feasible  # the one feasibility rule

__all__ = [
    "CONSTRAINT_ATTR",
    "GAP_CONSTRAINT",
    "best_feasible",
    "constraints_func",
    "gap_constraint",
    "is_feasible",
    "record_gap_constraint",
]

#: The constraint's key (``trial.set_constraint(GAP_CONSTRAINT, ...)``, system attr ``constraints:gap``).
GAP_CONSTRAINT = "gap"


def gap_constraint(gap: float, max_gap: float) -> float:
    """``gap - max_gap``: feasible when <= 0. A non-finite gap is infeasible (+inf)."""
    if gap is None or not math.isfinite(gap):
        return math.inf
    return float(gap) - float(max_gap)


def record_gap_constraint(trial: Any, gap: float | None, max_gap: float | None) -> float | None:
    """In the objective, once the final gap is known: record the constraint (no-op without ``max_gap``).

    Sets Optuna's constraint (``trial.set_constraint``) and the user attribute ``constraint``.
    Returns the value recorded.
    """
    if max_gap is None:
        return None
    value = gap_constraint(gap if gap is not None else math.nan, max_gap)
    trial.set_constraint(GAP_CONSTRAINT, value)
    trial.set_user_attr(CONSTRAINT_ATTR, [value])
    return value


def constraints_func(trial: FrozenTrial) -> Sequence[float]:
    """For a sampler's deprecated ``constraints_func``: the user attribute ``constraint`` (feasible when absent)."""
    return tuple(trial.user_attrs.get(CONSTRAINT_ATTR, (0.0,)))


def best_feasible(trials: Iterable[FrozenTrial], *, maximize: bool = True) -> FrozenTrial | None:
    """The best COMPLETE, feasible trial (ties: the earliest), or None."""
    candidates = [
        t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value) and is_feasible(t)
    ]
    if not candidates:
        return None
    key = (lambda t: (-t.value, t.number)) if maximize else (lambda t: (t.value, t.number))
    return min(candidates, key=key)
