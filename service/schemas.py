"""Request and response models of the HTTP API.

The search-space part is generated from :data:`trainer.SEARCH_SPACE` (one field per declared
parameter, its default bounds and its validity range), so adding a parameter to the trainer's
declaration adds it to the API, its validation and its OpenAPI schema.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationInfo, WithJsonSchema, create_model, field_validator, model_validator
from pydantic_core import PydanticCustomError

from service.confirmation import ConfirmSpec
from service._rdb import TRIAL_STATES
from service.features import ModelInfoOut, MarginOut, ReferenceOut, StudyFeatures, WarmStartOut
from service.models import SLUG_PATTERN, DeliveryStatus, SearchEnd, StudyStatus, WebhookEvent, as_utc, iso_utc
from trainer._recipe import _not_a_boolean  # Integer's rule, before a bound the schema states (as train_size)
from trainer import SEARCH_SPACE, BestConfig, Integer, Number, ParamSpec, Recipe, TrialMetrics, Uncertainty, validate_bounds

__all__ = [
    "CallerOut",
    "Bounds",
    "BestConfigOut",
    "BestSummary",
    "Health",
    "KerasDropoutOut",
    "KerasSettingsOut",
    "Links",
    "SearchSpace",
    "StudyList",
    "StudyStatus",
    "MUTABLE_FIELDS",
    "StopWhen",
    "StudyOut",
    "StudyPatch",
    "StudySpec",
    "Usage",
    "TrialCounts",
    "TrialList",
    "TrialOut",
    "TRIAL_STATES",
    "UtcDateTime",
    "SLUG_PATTERN",
    "DeliveryCounts",
    "DeliveryList",
    "DeliveryOut",
    "WebhookBase",
    "WebhookCreate",
    "WebhookCreated",
    "WebhookList",
    "WebhookPublic",
]

#: Every timestamp the API returns: in UTC, one format (:func:`service.models.iso_utc`, e.g.
#: ``2026-11-25T21:58:30.123456Z``), whatever the database handed back.
UtcDateTime = Annotated[
    dt.datetime,
    AfterValidator(as_utc),
    PlainSerializer(iso_utc, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time", "examples": ["2026-11-25T21:58:30.123456Z"]}),
]


SamplerName = Literal["tpe", "random"]
PrunerName = Literal["median", "fair", "hyperband", "none"]
TrialStateName = Literal[tuple(TRIAL_STATES.values())]  # type: ignore[valid-type]


class Bounds(BaseModel):
    """A search range; a missing end takes the trainer's default for that parameter."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    low: Number
    high: Number


def _bounds_model(spec: ParamSpec) -> type[Bounds]:
    """``Bounds`` of one parameter, its ends limited to the values the parameter may take (so the
    OpenAPI schema states the bounds the server enforces); ``low <= high`` is checked after."""
    limits: dict[str, float] = {("ge" if spec.minimum_inclusive else "gt"): spec.minimum}
    if math.isfinite(spec.maximum):
        limits["le" if spec.maximum_inclusive else "lt"] = spec.maximum
    title = "".join(part.title() for part in spec.name.split("_")) + "Bounds"
    return create_model(
        title,
        __base__=Bounds,
        __doc__=f"The range searched for {spec.name}: {spec.range_text()}, low <= high.",
        low=(Number, Field(spec.low, **limits)),
        high=(Number, Field(spec.high, **limits)),
    )


def _check_bounds(value: Bounds, info: ValidationInfo) -> Bounds:
    validate_bounds(info.field_name, value.low, value.high)  # ValueError names the field (low > high)
    return value


_NAMES = [spec.name for spec in SEARCH_SPACE]
_BOUNDS = {spec.name: _bounds_model(spec) for spec in SEARCH_SPACE}

SearchSpace = create_model(
    "SearchSpace",
    __config__=ConfigDict(extra="forbid"),
    __doc__="Per searched parameter, the range to search (defaults: the trainer's declaration).",
    __validators__={"check_bounds": field_validator(*_NAMES, mode="after")(_check_bounds)},
    **{
        spec.name: (
            _BOUNDS[spec.name],
            Field(
                default_factory=_BOUNDS[spec.name],
                description=f"{spec.description} Allowed {spec.range_text()}; "
                f"default [{spec.low:g}, {spec.high:g}]{', log scale' if spec.log else ''}.",
            ),
        )
        for spec in SEARCH_SPACE
    },
)


class StopWhen(BaseModel):
    """The spec's ``stop_when`` block: rules that end the search before its ``n_trials`` (either, both or none)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    target: Annotated[Number, Field(ge=0, le=1)] | None = Field(
        None, description="End the search once a search trial's validation accuracy reaches this value.")
    no_improvement_trials: Annotated[int, Field(ge=1), BeforeValidator(_not_a_boolean)] | None = Field(
        None, description="End the search after this many finished search trials in a row without a better best.")


#: A budget: a finite number above 0, never a boolean.
Budget = Annotated[Number, Field(gt=0, allow_inf_nan=False)]

#: The spec fields PATCH /v1/studies/NAME may change; every other field is fixed at submission.
MUTABLE_FIELDS = ("n_trials", "max_runtime_s", "max_trial_hours")


class _Budgets(BaseModel):
    """The fields a running study may change (:data:`MUTABLE_FIELDS`): the search's size and budgets."""

    n_trials: Integer = Field(20, ge=1, description="Trials to run in total (capped by REGSEARCH_MAX_TRIALS).")
    max_runtime_s: Budget | None = Field(
        None,
        description="Wall-clock seconds the search may run, from its first trial's start (null: no bound). When it "
        "runs out no search trial starts, running ones end at their current epoch (recorded, pruned) and the study "
        "moves on to confirmation.",
    )
    max_trial_hours: Budget | None = Field(
        None,
        description="Trial-hours the search may use: the sum of its search trials' durations (the GPU-hours when each "
        "trial holds one device; null: no bound). Runs out as max_runtime_s does.",
    )


class StudySpec(Recipe, StudyFeatures, _Budgets):
    """What to search: the training :class:`trainer.Recipe` (model, width, epochs, batch_size,
    learning_rate, data, seed), the study features of :class:`service.features.StudyFeatures`
    (reference, enqueue, warm_start_from, max_gap) and the study's own fields. Every field but
    ``name`` has a default."""

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

    name: str = Field(
        description="Unique study name: a slug (lowercase letters, digits, '-' and '_', 1-64 chars).",
        json_schema_extra={"pattern": SLUG_PATTERN.pattern},  # checked by _slug, with a readable message
    )
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
        description="After the search: the top_k distinct configs are trained again `repeats` more times "
        "each (new seed and validation split per repeat, paired across configs, unpruned); top_k 0 turns it off.",
    )
    stop_when: StopWhen = Field(default_factory=StopWhen, description="Rules that end the search early (default: none).")

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG_PATTERN.match(value):
            raise ValueError(
                "name must be a slug: 1-64 lowercase letters, digits, '-' or '_', starting and ending with a letter or digit"
            )
        return value



class StudyPatch(_Budgets):
    """``PATCH /v1/studies/NAME``: the fields to change (:data:`MUTABLE_FIELDS`, those given only; null removes a
    budget). Raising ``n_trials`` or a spent budget of a study whose search ended resumes it (then it confirms again)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"n_trials": 30, "max_runtime_s": 3600}]})

    n_trials: Integer = Field(  # type: ignore[assignment] - absent (None) unless given; never null when given
        None, ge=1, description="The search's trials in total; below the trials already started it ends the search now.")

    @model_validator(mode="before")
    @classmethod
    def _only_mutable(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key not in MUTABLE_FIELDS:
                    detail = "is not a study field" if key not in StudySpec.model_fields else "cannot be changed on an existing study"
                    raise PydanticCustomError(
                        "immutable_field", "field '{field}' {detail}; mutable: {mutable}",
                        {"field": key, "detail": detail, "mutable": ", ".join(MUTABLE_FIELDS)},
                    )
        return data


class Usage(BaseModel):
    """What the study has spent so far (its budgets are in the spec)."""

    runtime_s: float | None = Field(description="Seconds since the first trial started (to the end, once the study ended).")
    trial_hours: float = Field(description="The sum of the search trials' durations in hours (running ones so far).")
    confirm_trial_hours: float = Field(description="The same over the confirmation repeats: the confirmation stage's cost.")


class Links(BaseModel):
    self: str
    trials: str
    best: str
    stop: str
    dashboard: str


class CallerOut(BaseModel):
    """Who a request's token acts for (``GET /v1/whoami``)."""

    token: str | None = Field(description="The token's name (null with auth off).")
    scope: Literal["read", "write", "admin"] = Field(description="read < write < admin (admin with auth off).")
    owner: str = Field(description="The user the token acts for: the owner of the studies it submits.")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    database: str = Field(description="ok, or the class of the error the database raised.")


class TrialCounts(BaseModel):
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    stopped: int = Field(0, description="Trials ended by POST /v1/studies/NAME/stop (not failures; not in failed).")
    running: int = 0
    waiting: int = Field(
        0, description="Trials queued with fixed params: the reference, enqueued configs, retries of failed trials."
    )


class _BestSummaryBase(BaseModel):
    value: float = Field(description="Mean over the config's runs (its single value while it has one).")
    metric: str = "val_accuracy"
    trial_number: int
    params: dict[str, float]
    best_since: UtcDateTime


#: The fields of :class:`trainer.Uncertainty` the study block's ``best`` publishes (the whole of it is in GET .../best).
BEST_SUMMARY_UNCERTAINTY = ("n", "ci_low", "ci_high", "confirmed")

BestSummary = create_model(
    "BestSummary",
    __base__=_BestSummaryBase,
    __module__=__name__,
    **{name: (Uncertainty.model_fields[name].annotation, Uncertainty.model_fields[name]) for name in BEST_SUMMARY_UNCERTAINTY},
)
BestSummary.__doc__ = (
    "The study's best in a study block: its value and params, plus the run count, interval and confirmation of "
    "its :class:`trainer.Uncertainty` (the one uncertainty model; GET .../best serves the whole of it)."
)


class DeliveryCounts(BaseModel):
    """Webhook deliveries by status."""

    pending: int = Field(0, description="Not yet answered with a 2xx; retried with back-off.")
    delivered: int = Field(0, description="Answered with a 2xx.")
    failed: int = Field(0, description="Out of attempts, or refused (a host no longer allowed).")


class StudyOut(BaseModel):
    name: str
    owner: str = Field(description="The owner of the token that submitted it: only this owner or an admin may stop, "
                       "delete, replace or restore it.")
    status: StudyStatus
    n_trials: int
    trials_finished: int = Field(description="Complete plus pruned search trials (the ones that count towards n_trials).")
    confirm_trials: int = Field(0, description="Confirmation trials planned when the search ended (0 before, and when off).")
    confirm_finished: int = Field(0, description="Confirmation trials completed (status confirming while they run).")
    search_ended_by: SearchEnd | None = Field(
        None, description="Which rule ended the search: n_trials, max_runtime_s, max_trial_hours, target or "
        "no_improvement_trials (null while it runs). Ended early, n_trials is the search trials started.")
    usage: Usage
    counts: TrialCounts = Field(
        description="The study's search trials by state (warm-start trials and confirmation repeats are not counted here)."
    )
    best: BestSummary | None
    # -- issue 11 (study features) --
    reference: ReferenceOut | None = Field(
        None, description="The reference config this study measures (null with reference: false); note says if it was clipped."
    )
    margin: MarginOut | None = Field(None, description="The best's margin over the reference config (null until both ran).")
    warm_start: WarmStartOut | None = Field(None, description="Trials added from warm_start_from when the study was created.")
    model: ModelInfoOut | None = Field(
        None,
        description="The stored model of the best config's trial (GET .../best/model). The artifact store keeps the "
        "models of the configs the best can be (the confirmation's top_k, or 1, and the reference when it is confirmed).",
    )
    # -- end issue 11 --
    error: str | None = None
    spec: StudySpec
    created_at: UtcDateTime
    started_at: UtcDateTime | None
    finished_at: UtcDateTime | None
    deleted_at: UtcDateTime | None = Field(None, description="When it was moved to the trash (null unless it is there).")
    webhooks: DeliveryCounts = Field(
        default_factory=DeliveryCounts, description="The webhook deliveries of this study's events, by status (GET /v1/webhooks)."
    )
    links: Links


class StudyList(BaseModel):
    studies: list[StudyOut]


class TrialOut(TrialMetrics):
    """One trial: its state and params, per-epoch values, the metrics its training reported, and where it ran."""

    number: int
    state: TrialStateName
    stage: str = Field(
        "search",
        description="Why it ran: search (the sampler's), reference, enqueued, warm_start (copied from another study), "
        "confirm (a confirmation repeat).",
    )
    params: dict[str, float]
    value: float | None = Field(description="Final validation accuracy (complete trials).")
    intermediate_values: dict[int, float] = Field(description="Validation accuracy reported after each epoch.")
    history: list[dict[str, float]] = Field(description="Per-epoch metrics: loss, accuracy, val_loss, val_accuracy, gap.")
    duration_s: float | None = None
    datetime_start: UtcDateTime | None
    datetime_complete: UtcDateTime | None
    retry_of: int | None = Field(None, description="Number of the failed trial this one re-runs with the same params.")
    fail_reason: str | None = None
    worker: str | None = None
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
    best_since: UtcDateTime
    direction: Literal["maximize"] = "maximize"
    margin: MarginOut | None = Field(None, description="The best's margin over the reference config (issue 11).")


class KerasDropoutOut(BaseModel):
    rate: float
    where: str = Field(description="Where the architecture puts this rate.")
    layers: list[str] = Field(description="The Dropout layers of the network that take it.")


class KerasSettingsOut(BaseModel):
    """``best?format=keras``: the best config as layer-level Keras arguments (:func:`trainer._export.keras_settings`)."""

    study: str
    trial_number: int
    model: str
    width: float
    kernel_regularizer: dict[str, Any] = Field(
        description="keras.regularizers.serialize(L1L2(l1, l2)); keras.regularizers.deserialize() rebuilds it.")
    regularized: str = Field(description="Which layers' kernels take the regularizer.")
    dropout: dict[str, KerasDropoutOut] = Field(description="Per dropout parameter: its rate, where it goes, its layers.")
    layers: dict[str, dict[str, Any]] = Field(
        description="Per layer name of trainer.build_model's network: its class and settings (the regularizer for "
        "every Conv2D/Dense kernel, the rate for every Dropout).")
    train_size: int | None
    train_size_rule: str
    uncertainty: dict[str, Any] | None = Field(description="How sure the study is of this best (null for old studies).")


# -- webhooks (issue 20) ---------------------------------------------------------------------------


class WebhookBase(BaseModel):
    """A webhook: where regsearch POSTs which events, for one study or every study of its owner."""

    url: str = Field(min_length=1, max_length=2000, description="Where to POST the events (a scheme and host the server allows: "
                     "REGSEARCH_WEBHOOK_SCHEMES, REGSEARCH_WEBHOOK_ALLOWED_HOSTS).", examples=["https://hooks.example.com/regsearch"])
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list(WebhookEvent), min_length=1, max_length=len(WebhookEvent),
        description="The events to send: completed, failed, stopped (a study's final statuses), new_best (a new leader). "
        "Default: all four.",
    )
    study: str | None = Field(None, pattern=SLUG_PATTERN.pattern, description="The study whose events to send; null: every study of the owner.")


class WebhookCreate(WebhookBase):
    model_config = ConfigDict(extra="forbid")

    @field_validator("events")
    @classmethod
    def _once_each(cls, events: list[WebhookEvent]) -> list[WebhookEvent]:
        return list(dict.fromkeys(events))


class WebhookPublic(WebhookBase):
    id: int
    owner: str = Field(description="Whose hook it is (the owner of the token that registered it).")
    created_at: UtcDateTime
    deliveries: DeliveryCounts


class WebhookCreated(WebhookPublic):
    secret: str = Field(description="The key of the X-Regsearch-Signature HMAC: shown only in this answer, keep it.")


class WebhookList(BaseModel):
    webhooks: list[WebhookPublic]


class DeliveryOut(BaseModel):
    id: str = Field(description="The delivery id: the X-Regsearch-Delivery header and the body's id (the same on every attempt).")
    event: WebhookEvent
    study: str
    status: DeliveryStatus
    attempts: int = Field(description="Attempts made so far.")
    last_status_code: int | None = Field(description="The receiver's last HTTP status (null: no answer).")
    last_error: str | None = Field(description="Why the last attempt failed (null once delivered).")
    created_at: UtcDateTime
    next_attempt_at: UtcDateTime | None = Field(description="When a pending delivery is tried next (null once it ended).")
    delivered_at: UtcDateTime | None


class DeliveryList(BaseModel):
    deliveries: list[DeliveryOut]
