"""What the report shows, gathered through the service's own functions (no statistic is recomputed here).

* the study as the API shows it: :func:`service.views.study_out` (status, counts, best, margin, reference);
* the best config and how sure it is: the best-config JSON of ``GET .../best`` (:func:`service.views.best_config`:
  mean, interval, ties, robust ranges from :mod:`service.confirmation`) and the stored
  :class:`~service.confirmation.Confirmation` summary (every candidate's runs);
* the trials as the export's flat rows (:func:`service.features.trial_row`) plus their per-epoch values;
* the importances of ``GET .../importance`` (same evaluator, same cache, same trials);
* the hand-off: :func:`trainer.keras_settings` and :func:`trainer.rescale_for_train_size`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service import features, studies, views
from service.confirmation import CONFIRMS_ATTR, REPEAT_ATTR
from service.coordination import best_record
from service.models import ACTIVE_STATUSES, SEARCH_STAGES, TrialStage
from service.schemas import StudyOut, StudySpec

__all__ = ["FULL_TRAINING_SET", "ReportData", "TrialPoint", "gather"]

#: CIFAR-10's training images: what ``regsearch retrain`` trains on with the full data set.
FULL_TRAINING_SET = 50_000

#: The importance evaluator the report shows (the route's default).
EVALUATOR = "ped-anova"


@dataclasses.dataclass(frozen=True)
class TrialPoint:
    """One trial as the report plots it: the export's row plus its per-epoch validation accuracy."""

    row: dict[str, Any]
    curve: dict[int, float]  # epoch (from 1) -> validation accuracy
    confirms: int | None = None
    repeat: int | None = None

    @property
    def number(self) -> int:
        return self.row["number"]

    @property
    def state(self) -> str:
        return self.row["state"]

    @property
    def stage(self) -> str:
        return self.row["stage"]

    @property
    def value(self) -> float | None:
        return self.row["value"]

    def param(self, name: str) -> float | None:
        return self.row.get(name)

    @property
    def stopped_at(self) -> int:
        """The epoch (from 1) of its last report."""
        return max(self.curve) if self.curve else (self.row.get("epochs_run") or 0)


@dataclasses.dataclass(frozen=True)
class ReportData:
    """Everything one report page shows."""

    study: StudyOut
    spec: StudySpec
    trials: list[TrialPoint]
    best: Any  # service.schemas.BestConfigOut (the best-config JSON), or None before any trial completed
    summary: dict[str, Any] | None  # the stored Confirmation (candidates with their runs), or None
    importance: features.ImportanceOut | None
    importance_note: str | None  # why there is no importance (too few trials)
    keras: dict[str, Any] | None  # trainer.keras_settings(best)
    carry_over: dict[str, Any] | None
    base_url: str
    generated_at: dt.datetime

    @property
    def name(self) -> str:
        return self.study.name

    @property
    def active(self) -> bool:
        return self.study.status in ACTIVE_STATUSES

    @property
    def search(self) -> list[TrialPoint]:
        """The study's own search trials (the reference and enqueued configs included; no warm-start copy, no repeat)."""
        return [trial for trial in self.trials if trial.stage in SEARCH_STAGES]

    @property
    def complete(self) -> list[TrialPoint]:
        return [trial for trial in self.search if trial.state == "complete" and trial.value is not None]

    @property
    def pruned(self) -> list[TrialPoint]:
        return [trial for trial in self.search if trial.state == "pruned" and trial.curve]

    @property
    def reference_numbers(self) -> set[int]:
        return {trial.number for trial in self.complete if trial.stage == TrialStage.REFERENCE}

    def repeats_of(self, number: int) -> list[TrialPoint]:
        """The complete confirmation repeats of search trial ``number``, one per repeat (a retried one counts once)."""
        seen: dict[int, TrialPoint] = {}
        for trial in self.trials:
            if trial.stage == TrialStage.CONFIRM and trial.state == "complete" and trial.confirms == number:
                seen.setdefault(trial.repeat or 0, trial)
        return [seen[repeat] for repeat in sorted(seen)]

    def trial(self, number: int) -> TrialPoint | None:
        return next((trial for trial in self.trials if trial.number == number), None)


def _points(storage: Any, name: str) -> list[TrialPoint]:
    try:
        frozen = storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False)
    except KeyError:
        return []
    return [
        TrialPoint(
            row=features.trial_row(trial),
            curve={int(step) + 1: float(value) for step, value in sorted(trial.intermediate_values.items())},
            confirms=trial.user_attrs.get(CONFIRMS_ATTR),
            repeat=trial.user_attrs.get(REPEAT_ATTR),
        )
        for trial in frozen
    ]


def _carry_over(best: Any) -> dict[str, Any] | None:
    """The λ/(2n) rule with this study's numbers: the config on the full CIFAR-10 training set."""
    if best is None or not best.train_size:
        return None
    from trainer import rescale_for_train_size

    full = rescale_for_train_size(best.regularization, best.train_size, FULL_TRAINING_SET)
    return {"n_study": best.train_size, "n_full": FULL_TRAINING_SET, "factor": best.train_size / FULL_TRAINING_SET,
            "found": best.regularization, "full": full}


def gather(session: Session, factory: sessionmaker[Session], storage: Any, cache: features.ImportanceCache, name: str,
           *, base_url: str = "") -> ReportData:
    """Read everything the report of study ``name`` shows (``StudyNotFound`` for an unknown name)."""
    row = studies.get_study(session, name)
    spec = StudySpec.model_validate(row.spec)
    study = views.study_out(session, row, spec)
    record = best_record(session, row.id)
    best = views.best_config(session, row)
    importance, note = None, None
    try:
        importance = views.importance_out(factory, storage, cache, name, EVALUATOR)
    except features.TooFewTrials as error:
        note = str(error)
    keras = None
    if best is not None:
        from trainer._export import keras_settings

        keras = keras_settings(best)
    return ReportData(
        study=study,
        spec=spec,
        trials=_points(storage, name),
        best=best,
        summary=None if record is None else record.summary,
        importance=importance,
        importance_note=note,
        keras=keras,
        carry_over=_carry_over(best),
        base_url=base_url.rstrip("/"),
        generated_at=dt.datetime.now(dt.timezone.utc),
    )
