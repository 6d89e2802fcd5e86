"""The study features' result types: each one pydantic model, returned by the feature and answered by the API
as is (named as the API publishes them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from service.features._export import COLUMNS, METRIC_COLUMNS, PARAM_COLUMNS
from trainer._recipe import TrialMetrics

__all__ = ["ImportanceOut", "MarginOut", "ModelInfoOut", "ReferenceOut", "TrialRow", "WarmStartOut"]


class MarginOut(BaseModel):
    """The best's margin over the reference config, in the study's metric (``best - reference``)."""

    model_config = ConfigDict(frozen=True)

    value: float = Field(description="mean(best) - mean(reference).")
    best: float
    reference: float
    n_best: int = Field(description="Values the best's side rests on (1, or its confirmation repeats).")
    n_reference: int
    low: float | None = Field(None, description="95% Welch interval of the difference (with repeats on both sides).")
    high: float | None = None


class ReferenceOut(BaseModel):
    """The reference params inside the study's bounds; ``clipped`` maps each moved parameter to (default, used)."""

    model_config = ConfigDict(frozen=True)

    params: dict[str, float]
    clipped: dict[str, tuple[float, float]] = Field(description="Parameter -> [default, value used] where narrowed bounds moved it.")
    note: str | None = Field(description="Why the reference differs from the textbook defaults (null when it does not).")


class ImportanceOut(BaseModel):
    """Importances (normalized to sum to 1, most important first) and the trials they rest on."""

    model_config = ConfigDict(frozen=True)

    study: str
    evaluator: str = Field(description="ped-anova (Optuna's default) or fanova.")
    n_trials: int = Field(description="Complete trials the importances rest on.")
    importances: dict[str, float] = Field(description="Per parameter, normalized to sum to 1, most important first.")


class ModelInfoOut(BaseModel):
    """A trial's stored model (the trial system attribute ``regsearch:model``)."""

    model_config = ConfigDict(frozen=True)

    artifact_id: str
    trial_number: int
    value: float
    size_bytes: int
    filename: str


class WarmStartOut(BaseModel):
    """What ``warm_start_from`` added (the study system attribute ``regsearch:warm_start``)."""

    model_config = ConfigDict(frozen=True)

    source: str
    trials: int = Field(description="Complete trials added to this study.")
    skipped_out_of_bounds: int
    skipped_no_gap: int


#: For the trials route's OpenAPI description of ``format=csv|json``.
EXPORT_COLUMNS_TEXT = ", ".join(COLUMNS)


_ROW_TYPES: dict[str, Any] = {
    "number": int,
    "state": str,
    "stage": str,
    **{name: float | None for name in PARAM_COLUMNS},
    "value": float | None,
    **{name: TrialMetrics.model_fields[name].annotation for name in METRIC_COLUMNS},
    "feasible": bool | None,
    "duration_s": float | None,
    "datetime_start": str | None,
    "datetime_complete": str | None,
    "retry_of": int | None,
    "fail_reason": str | None,
    "worker": str | None,
}

#: One exported trial (``?format=json`` rows; the CSV's columns), in :data:`COLUMNS` order.
TrialRow = create_model(
    "TrialRow",
    __doc__="One trial as a flat row: the columns of GET /v1/studies/{name}/trials?format=csv|json.",
    **{name: (_ROW_TYPES[name], ...) for name in COLUMNS},
)
