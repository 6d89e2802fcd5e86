"""What a trial is, read from its attributes (an ``optuna.Trial`` or ``FrozenTrial``): the rules every
module shares, so that each is written once.

* :func:`is_search_trial`: whether it counts towards ``n_trials`` (the slot accounting, the API's counts,
  the confirmation's candidates); its SQL twin is :func:`service._rdb.search_trial`.
* :func:`is_feasible`: Optuna's constraints rule (the ``max_gap`` constraint, :mod:`service.features`).
"""

from __future__ import annotations

from typing import Any

from service.models import SEARCH_STAGES, STAGE_ATTR

__all__ = ["CONSTRAINT_ATTR", "is_feasible", "is_search_trial"]

#: The user attribute holding ``[gap - max_gap]`` (shown in the dashboard; read by ``constraints_func``).
CONSTRAINT_ATTR = "constraint"


def is_search_trial(trial: Any) -> bool:
    """Whether a trial counts towards ``n_trials``: its ``stage`` is absent or one of :data:`SEARCH_STAGES`.

    Warm-start trials (copied from another study) and confirmation repeats are counted apart.
    """
    stage = trial.user_attrs.get(STAGE_ATTR)
    return stage is None or stage in SEARCH_STAGES


def is_feasible(trial: Any) -> bool:
    """Every constraint <= 0 (Optuna's rule; a trial without constraints is feasible)."""
    values = list(trial.constraints.values())
    values += list(trial.user_attrs.get(CONSTRAINT_ATTR, ()))
    return all(value <= 0.0 for value in values)
