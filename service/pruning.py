"""A pruner fair to strong regularizers (a proposal, measured by ``benchmarks/search_quality.py`` part (c)).

The service's median pruner (:func:`service._optuna.make_pruner`: ``MedianPruner(n_startup_trials=
min(5, n_trials // 4), n_warmup_steps=1)``) compares trials from their second epoch on. Strong weight
decay and high dropout learn slower and overtake later, so an early comparison kills exactly them.
:func:`make_fair_pruner` changes two things:

* the warm-up is a share of the epoch budget (``warmup_fraction``, default 0.4: no comparison before
  epoch 7 of 15), not one epoch;
* :class:`StalledGate` only lets the median rule prune a trial that has stopped improving: its best
  over its last ``patience`` epochs (``patience_fraction`` of the budget) beats its best before them
  by less than ``min_improvement`` (half a point). A trial still climbing is never stopped; a stalled
  one below the median is. (Optuna's ``PatientPruner`` is the near miss: it prunes only a trial that
  got *worse*, so a plateau below the median would never be pruned.)

With ``epochs <= 2`` it behaves like the median pruner.
"""

from __future__ import annotations

import math

import optuna

__all__ = ["StalledGate", "make_fair_pruner"]


class StalledGate(optuna.pruners.BasePruner):
    """Prune when ``wrapped`` says so *and* the trial has stopped improving (maximized objective).

    Stopped improving: ``max(values of the last patience steps) < max(values before) + min_improvement``.
    With no more than ``patience`` steps reported, the trial is never pruned.
    """

    def __init__(self, wrapped: optuna.pruners.BasePruner, patience: int, min_improvement: float = 0.005) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an int >= 1, got {patience!r}")
        if not math.isfinite(min_improvement) or min_improvement < 0:
            raise ValueError(f"min_improvement must be a finite number >= 0, got {min_improvement!r}")
        self.wrapped = wrapped
        self.patience = patience
        self.min_improvement = min_improvement

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        values = [trial.intermediate_values[step] for step in sorted(trial.intermediate_values)]
        if len(values) <= self.patience:
            return False
        before, recent = values[: -self.patience], values[-self.patience :]
        if max(recent) >= max(before) + self.min_improvement:
            return False  # still improving
        return self.wrapped.prune(study, trial)


def make_fair_pruner(
    n_trials: int, epochs: int, *, warmup_fraction: float = 0.4, patience_fraction: float = 0.2
) -> optuna.pruners.BasePruner:
    """``StalledGate(MedianPruner(n_startup, warm-up ceil(warmup_fraction * epochs)), patience ceil(patience_fraction * epochs))``.

    ``n_startup`` is the service's ``min(5, n_trials // 4)`` (at least 1).
    """
    for name, value in (("n_trials", n_trials), ("epochs", epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    for name, value in (("warmup_fraction", warmup_fraction), ("patience_fraction", patience_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    median = optuna.pruners.MedianPruner(
        n_startup_trials=min(5, max(1, n_trials // 4)), n_warmup_steps=max(1, math.ceil(epochs * warmup_fraction))
    )
    return StalledGate(median, patience=max(1, math.ceil(epochs * patience_fraction)))
