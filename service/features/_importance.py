"""Each parameter's importance, by Optuna's own evaluators, cached per (study, finished trials, evaluator).

``importance(study, "ped-anova")`` is ``optuna.importance.get_param_importances`` with
``PedAnovaImportanceEvaluator`` (Optuna 5's default); ``"fanova"`` uses ``FanovaImportanceEvaluator``
(a random forest: needs scikit-learn, a dependency of regsearch; seeded, so repeatable). Both run
over the study's COMPLETE trials as Optuna's own call would, except the confirmation stage's repeats:
they re-run the top configs with other seeds, and counting them would weigh the best region several
times over (the evaluators then rank what the search *revisited*, not what it found).

Where it runs: on demand in the API process, off the event loop, at most once per trial count.
``ImportanceCache.get`` is blocking (a storage read, then PED-ANOVA in milliseconds or fANOVA in about
a second); the route awaits it with ``fastapi.concurrency.run_in_threadpool``. A result is keyed by
``(study name, number of COMPLETE trials, evaluator)``: it changes only when a trial completes, so
repeated requests (a dashboard polling) cost one count query, and concurrent requests for the same
key compute it once (a per-key lock). Precomputing in the workers was rejected: it would run after
every trial of every study whether or not anyone asks, and put fANOVA's forest in the training
processes.

Below :data:`MIN_TRIALS` complete trials the answer would rest on nothing (PED-ANOVA's top-10%
quantile holds less than one trial; Optuna itself then warns that importances "will be equal"), so
:class:`TooFewTrials` is raised (a 409 at the API) with the count and the minimum.
"""

from __future__ import annotations

import collections
import threading
from typing import Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from service._rdb import quiet
from service.features._schemas import ImportanceOut
from service.models import STAGE_ATTR, TrialStage

__all__ = ["EVALUATORS", "MIN_TRIALS", "Evaluator", "ImportanceOut", "ImportanceCache", "TooFewTrials", "importance"]

Evaluator = Literal["ped-anova", "fanova"]
EVALUATORS: tuple[str, ...] = ("ped-anova", "fanova")

#: The fewest COMPLETE trials importance is computed on (PED-ANOVA's top 10% then holds one trial).
MIN_TRIALS = 10


class TooFewTrials(Exception):
    """Not enough complete trials to rank the parameters (a 409 at the API)."""

    def __init__(self, study: str, n_trials: int, minimum: int) -> None:
        self.study, self.n_trials, self.minimum = study, n_trials, minimum
        super().__init__(
            f"study {study!r} has {n_trials} complete trial(s); parameter importance needs at least {minimum}"
        )


def make_evaluator(evaluator: str, *, seed: int = 0) -> optuna.importance.BaseImportanceEvaluator:
    """Optuna's evaluator for ``evaluator``; ``ValueError`` for an unknown name."""
    if evaluator == "ped-anova":
        return optuna.importance.PedAnovaImportanceEvaluator()
    if evaluator == "fanova":
        return optuna.importance.FanovaImportanceEvaluator(seed=seed)
    raise ValueError(f"evaluator must be one of {list(EVALUATORS)}, got {evaluator!r}")


def _ranked_trials(study: optuna.Study) -> tuple[list[FrozenTrial], bool]:
    """The COMPLETE trials the importances rest on (every one but the confirmation repeats), and whether
    any was left out."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ranked = [trial for trial in trials if trial.user_attrs.get(STAGE_ATTR) != TrialStage.CONFIRM]
    return ranked, len(ranked) < len(trials)


def _complete_count(study: optuna.Study) -> int:
    return len(_ranked_trials(study)[0])


def importance(study: optuna.Study, evaluator: str = "ped-anova", *, min_trials: int = MIN_TRIALS, seed: int = 0) -> ImportanceOut:
    """Compute the importances now (blocking). ``TooFewTrials`` below ``min_trials``; ``ValueError`` for a bad evaluator."""
    instance = make_evaluator(evaluator, seed=seed)
    trials, left_out = _ranked_trials(study)
    n_trials = len(trials)
    if n_trials < min_trials:
        raise TooFewTrials(study.study_name, n_trials, min_trials)
    ranked = study
    if left_out:
        ranked = optuna.create_study(directions=study.directions)  # in memory: the trials without the repeats
        ranked.add_trials(trials)
    with quiet():  # fANOVA is experimental
        values = optuna.importance.get_param_importances(ranked, evaluator=instance)
    return ImportanceOut(study=study.study_name, evaluator=evaluator, n_trials=n_trials, importances=dict(values))


class ImportanceCache:
    """At most one computation per (study, complete trials, evaluator); thread-safe, LRU-bounded."""

    def __init__(self, maxsize: int = 256, *, min_trials: int = MIN_TRIALS) -> None:
        self.maxsize = maxsize
        self.min_trials = min_trials
        self.computed = 0  # how many times an evaluator actually ran (observable by tests)
        self._results: collections.OrderedDict[tuple, ImportanceOut] = collections.OrderedDict()
        self._locks: dict[tuple, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, study: optuna.Study, evaluator: str = "ped-anova") -> ImportanceOut:
        """The cached result for the study's current trial count, computing it if needed (blocking)."""
        make_evaluator(evaluator)  # a bad name fails before any storage read
        n_trials = _complete_count(study)
        if n_trials < self.min_trials:
            raise TooFewTrials(study.study_name, n_trials, self.min_trials)
        key = (study.study_name, n_trials, evaluator)
        with self._lock:
            if key in self._results:
                self._results.move_to_end(key)
                return self._results[key]
            key_lock = self._locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._results:
                    return self._results[key]
            result = importance(study, evaluator, min_trials=self.min_trials)
            with self._lock:
                self.computed += 1
                # A trial completing between the count and the evaluation: key by what it rests on.
                self._results[(study.study_name, result.n_trials, evaluator)] = result
                self._results[key] = result
                while len(self._results) > self.maxsize:
                    self._results.popitem(last=False)
                self._locks.pop(key, None)
            return result

    def forget(self, study_name: str) -> None:
        """Drop a study's entries (call when a study is deleted, so a re-created one starts afresh)."""
        with self._lock:
            for key in [key for key in self._results if key[0] == study_name]:
                del self._results[key]
