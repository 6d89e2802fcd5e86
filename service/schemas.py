"""Request and response models of the HTTP API.

The search-space part is generated from :data:`trainer.SEARCH_SPACE` (one field per declared
parameter, its default bounds and its validity range), so adding a parameter to the trainer's
declaration adds it to the API, its validation and its OpenAPI schema.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator

from service.confirmation import ConfirmSpec
from service.models import StudyStatus
from trainer import SEARCH_SPACE, SEARCH_SPACE_BY_NAME, BestConfig, Recipe, TrialMetrics, validate_bounds

__all__ = [
    "Bounds",
    "BestConfigOut",
    "BestSummary",
    "Health",
    "Links",
    "SearchSpace",
    "StudyList",
    "StudyStatus",
    "StudyOut",
    "StudySpec",
    "TrialCounts",
    "TrialList",
    "TrialOut",
    "TRIAL_STATES",
    "SLUG_PATTERN",
]

SLUG_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$")

SamplerName = Literal["tpe", "random"]
PrunerName = Literal["median", "fair", "hyperband", "none"]
#: Optuna's trial states, as the API names them (``TrialOut.state`` and the fields of ``TrialCounts``).
TRIAL_STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}
TrialStateName = Literal[tuple(TRIAL_STATES.values())]  # type: ignore[valid-type]


class Bounds(BaseModel):
    """A search range; a missing end takes the trainer's default for that parameter."""

    model_config = ConfigDict(extra="forbid")

    low: float
    high: float


def _fill_default_bounds(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, dict):
        spec = SEARCH_SPACE_BY_NAME[info.field_name]
        return {"low": spec.low, "high": spec.high, **value}
    return value


def _check_bounds(value: Bounds, info: ValidationInfo) -> Bounds:
    low, high = validate_bounds(info.field_name, value.low, value.high)  # ValueError names the field
    return Bounds(low=low, high=high)


_NAMES = [spec.name for spec in SEARCH_SPACE]

SearchSpace = create_model(
    "SearchSpace",
    __config__=ConfigDict(extra="forbid"),
    __doc__="Per searched parameter, the range to search (defaults: the trainer's declaration).",
    __validators__={
        "fill_defaults": field_validator(*_NAMES, mode="before")(_fill_default_bounds),
        "check_bounds": field_validator(*_NAMES, mode="after")(_check_bounds),
    },
    **{
        spec.name: (
            Bounds,
            Field(
                default_factory=lambda spec=spec: Bounds(low=spec.low, high=spec.high),
                description=f"{spec.description} Allowed {spec.range_text()}; "
                f"default [{spec.low:g}, {spec.high:g}]{', log scale' if spec.log else ''}.",
            ),
        )
        for spec in SEARCH_SPACE
    },
)


class StudySpec(Recipe):
    """What to search: the training :class:`trainer.Recipe` (model, width, epochs, batch_size,
    learning_rate, data, seed) plus the study's own fields. Every field but ``name`` has a default."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "baseline-quick",
                    "model": "baseline",
                    "width": 0.5,
                    "n_trials": 8,
                    "epochs": 3,
                    "data": {"train_size": 2000},
                }
            ]
        },
    )

    name: str = Field(description="Unique study name: a slug (lowercase letters, digits, '-' and '_', 1-64 chars).")
    n_trials: int = Field(20, ge=1, description="Trials to run in total (capped by REGSEARCH_MAX_TRIALS).")
    search_space: SearchSpace = Field(default_factory=SearchSpace)  # type: ignore[valid-type]
    sampler: SamplerName = Field("tpe", description="tpe (seeded TPE) or random.")
    pruner: PrunerName = Field(
        "median",
        description="Stops weak trials early from each epoch's validation accuracy: median (Optuna's median rule from "
        "epoch 2), fair (the median rule only after 40% of the epochs and only for a trial that stopped improving, "
        "see service.pruning), hyperband or none.",
    )
    confirm: ConfirmSpec = Field(
        default_factory=ConfirmSpec,
        description="After the search's n_trials: the top_k distinct configs are trained again `repeats` more times "
        "each (new seed and validation split per repeat, paired across configs, unpruned); top_k 0 turns it off.",
    )

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG_PATTERN.match(value):
            raise ValueError(
                "name must be a slug: 1-64 lowercase letters, digits, '-' or '_', starting and ending with a letter or digit"
            )
        return value



class Links(BaseModel):
    self: str
    trials: str
    best: str
    stop: str
    dashboard: str


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    database: str = Field(description="ok, or the class of the error the database raised.")


class TrialCounts(BaseModel):
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = Field(0, description="Trials queued for a retry (same params) after a failure.")


class BestSummary(BaseModel):
    value: float = Field(description="Mean over the config's runs (its single value while it has one).")
    metric: str = "val_accuracy"
    trial_number: int
    params: dict[str, float]
    best_since: dt.datetime
    n: int | None = Field(None, description="Runs behind value (search trial plus confirmation repeats).")
    ci_low: float | None = Field(None, description="95% confidence interval of the mean (null with one run).")
    ci_high: float | None = None
    confirmed: bool | None = Field(None, description="False for the current leader until confirmation has finished.")


class StudyOut(BaseModel):
    name: str
    status: StudyStatus
    n_trials: int
    trials_finished: int = Field(description="Complete plus pruned search trials (the ones that count towards n_trials).")
    confirm_trials: int = Field(0, description="Confirmation trials planned when the search ended (0 before, and when off).")
    confirm_finished: int = Field(0, description="Confirmation trials completed (status confirming while they run).")
    counts: TrialCounts
    best: BestSummary | None
    error: str | None = None
    spec: StudySpec
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    links: Links


class StudyList(BaseModel):
    studies: list[StudyOut]


class TrialOut(TrialMetrics):
    """One trial: its state and params, per-epoch values, the metrics its training reported, and where it ran."""

    number: int
    state: TrialStateName
    params: dict[str, float]
    value: float | None = Field(description="Final validation accuracy (complete trials).")
    intermediate_values: dict[int, float] = Field(description="Validation accuracy reported after each epoch.")
    history: list[dict[str, float]] = Field(description="Per-epoch metrics: loss, accuracy, val_loss, val_accuracy, gap.")
    duration_s: float | None = None
    datetime_start: dt.datetime | None
    datetime_complete: dt.datetime | None
    retry_of: int | None = Field(None, description="Number of the failed trial this one re-runs with the same params.")
    fail_reason: str | None = None
    worker: str | None = None
    stage: str | None = Field(None, description="Null for a search trial; 'confirm' for a confirmation repeat.")
    confirms: int | None = Field(None, description="A confirmation repeat: the search trial whose config it re-trains.")
    repeat: int | None = Field(None, description="A confirmation repeat: its number (1..repeats); its seed is the repeat's.")


class TrialList(BaseModel):
    study: str
    trials: list[TrialOut]


class BestConfigOut(BestConfig):
    """The best-config JSON: :class:`trainer.BestConfig` (the study's recipe, ``params``, the derived
    ``keras`` and ``augment``) plus when it became best and the direction."""

    study: str
    value: float
    trial_number: int
    best_since: dt.datetime
    direction: Literal["maximize"] = "maximize"
