"""The best configuration of a study: the study's :class:`Recipe` plus the regularization it found.

Its JSON form (:meth:`BestConfig.to_dict`) is what ``GET /v1/studies/{name}/best`` serves (the
service's ``BestConfigOut`` is a subclass), what ``regsearch best NAME -o best.json`` writes and
what :func:`trainer.load_best` reads back. Pydantic validates it; :func:`describe` turns a
validation error into one line naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field, field_validator, model_validator

from trainer._architecture import MODELS
from trainer._recipe import Recipe
from trainer._space import RegularizationConfig

__all__ = ["BestConfig", "ParamRange", "RunStats", "TiedConfig", "Uncertainty", "describe"]


class ParamRange(BaseModel):
    """A parameter's robust range: anywhere in [low, high] did as well as the best, within noise."""

    model_config = ConfigDict(frozen=True)

    low: float
    high: float


class TiedConfig(BaseModel):
    """A config statistically tied with the best (its paired difference is not significant)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    trial_number: int
    params: dict[str, float]
    mean: float
    n: int
    p_value: float | None = Field(None, description="One-sided p of 'this config is worse than the best'.")

    @model_validator(mode="before")
    @classmethod
    def _flatten_test(cls, values: Any) -> Any:
        """The confirmation stage's tie (``service.confirmation.Tie``) nests the p-value in ``test``."""
        if isinstance(values, Mapping) and "p_value" not in values and values.get("test") is not None:
            test = values["test"]
            return {**values, "p_value": test.get("p_value") if isinstance(test, Mapping) else getattr(test, "p_value", None)}
        return values


class RunStats(BaseModel):
    """Mean, sample standard deviation and Student-t interval of a config's runs (search trial plus repeats).

    Declared once here (the trainer owns the best-config file): the confirmation stage computes it for
    every candidate (``service.confirmation.ConfigResult``), :class:`Uncertainty` carries the best's,
    and the API's best block (``service.schemas.BestSummary``) publishes a subset. A field is None in
    best-config files written before the confirmation stage (issue 10), so all of them are optional;
    the confirmation stage always sets ``mean`` and ``n``.
    """

    model_config = ConfigDict(frozen=True)

    mean: float | None = Field(None, description="Mean of the metric over the config's runs (search trial plus repeats).")
    std: float | None = Field(None, description="Sample standard deviation of those runs (ddof=1; null with one run).")
    n: int | None = Field(None, ge=1, description="Number of runs (search trial plus confirmation repeats).")
    ci_low: float | None = Field(
        None, description="Lower end of the confidence interval of the mean (Student t, n - 1 df; null with one run)."
    )
    ci_high: float | None = Field(None, description="Upper end of that interval (null with one run).")
    confidence: float | None = Field(None, description="Level of that interval (0.95).")


class Uncertainty(RunStats):
    """How sure a study is of its best: the one uncertainty model.

    The confirmation stage produces it (``service.confirmation.Confirmation.uncertainty()``); the stored
    best config and the API's ``GET .../best`` inherit it (:class:`BestConfig`, flat in their JSON), the
    API's study block publishes a subset of its fields, the export (:func:`trainer.keras_settings`'s
    ``uncertainty``) and the retrain's provenance read it. Every field is optional: files written before
    issue 10 have none of them.
    """

    confirmed: bool | None = Field(
        None, description="True once every repeat of the confirmation stage finished; false for the current leader "
        "while it runs (or with confirmation off)."
    )
    first_value: float | None = Field(None, description="The single-run value the config was first picked on.")
    ties: list[TiedConfig] = Field(
        default_factory=list, description="Configs whose paired difference from the best is not significant (see test)."
    )
    robust_ranges: dict[str, ParamRange] = Field(
        default_factory=dict, description="Per parameter, the interval spanned by the best and its ties: as good, within noise."
    )
    test: str | None = Field(None, description="The test that decided the ties, and why it suits n = 3.")
    candidates: int | None = Field(
        None, ge=1, description="How many configs were compared for this answer (the best included): the top configs "
        "and the reference. One: there was nothing to tie with."
    )
    is_reference: bool | None = Field(
        None, description="True when the best is the reference config itself (the defaults): the study found nothing better."
    )

    def uncertainty(self) -> "Uncertainty | None":
        """These fields alone (an :class:`Uncertainty`, whatever subclass self is), or None for a file without them."""
        if self.mean is None or self.n is None:
            return None
        return Uncertainty.model_validate(self.model_dump(include=set(Uncertainty.model_fields)))

    def uncertainty_lines(self, metric: str = "val_accuracy") -> list[str]:
        """How sure the study is of this best, in a few lines of text (comments, CLI output); none for old files."""
        if self.mean is None or self.n is None:
            return []
        status = "confirmed" if self.confirmed else "unconfirmed (confirmation still running or off)"
        line = f"{metric} mean {self.mean:.4f} over {self.n} run(s)"
        if self.ci_low is not None and self.ci_high is not None:
            line += f", {100 * (self.confidence or 0.95):.0f}% CI [{self.ci_low:.4f}, {self.ci_high:.4f}], std {self.std:.4f}"
        if self.first_value is not None:
            line += f"; first picked on {self.first_value:.4f}"
        lines = [f"{line}; {status}"]
        if self.is_reference:
            lines.append("the best is the reference config itself (the defaults): nothing the search tried did better")
        if self.ties:
            lines.append("tied with trial(s) " + ", ".join(f"{tie.trial_number} (mean {tie.mean:.4f})" for tie in self.ties))
        elif self.candidates == 1:
            lines.append("no tie possible: no other config was compared")
        elif self.candidates:
            others = self.candidates - 1
            lines.append(f"no tie: the other {others} compared config{'s are' if others > 1 else ' is'} significantly worse")
        else:
            lines.append("no tie")
        for name, span in self.robust_ranges.items():
            if span.low != span.high:
                lines.append(f"robust range {name}: {span.low:.4g} to {span.high:.4g}")
        return lines


class BestConfig(Uncertainty, Recipe):
    """How the study trained (its :class:`Recipe`: model, width, epochs, batch size, learning rate, data,
    seed) and the best regularization it found (``params`` in JSON).

    ``train_size`` is the number of images the study's trials trained on (after the validation split):
    the ``n`` of the lambda/(2n) rule (see :mod:`trainer._space`), needed to carry the strength over to
    a larger training set. ``keras`` (the Keras coefficients) and ``augment`` (``data.augment``) are
    derived, written for readers and checked against ``params`` when read back.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    model: Literal[MODELS] = Field(description="Which convnet the study trained.")  # type: ignore[valid-type]
    regularization: RegularizationConfig = Field(alias="params", description="The best point of the search space.")
    study: str | None = None
    trial_number: int | None = Field(None, ge=0)
    value: float | None = Field(None, description="The best config's objective: the mean over its runs (one run: its value).")
    metric: str = "val_accuracy"
    train_size: int | None = Field(None, ge=1, description="Images the trials trained on (after the validation split).")
    data_dir: str | None = Field(
        None, description="Where the study's images came from: the server's CIFAR-10 directory (REGSEARCH_DATA_DIR; "
        "null: the keras.datasets download). `regsearch retrain` uses it when it exists on this machine and no "
        "--data-dir or REGSEARCH_DATA_DIR is given."
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def keras(self) -> dict[str, float]:
        """The values as Keras layers take them (l1, l2 and the two dropout rates)."""
        return self.regularization.keras_values()

    @computed_field  # type: ignore[prop-decorator]
    @property
    def augment(self) -> bool:
        """``data.augment``, at the top level as earlier files have it."""
        return self.data.augment

    @field_validator("regularization", mode="before")
    @classmethod
    def _every_parameter(cls, value: Any) -> Any:
        return RegularizationConfig.from_dict(value) if isinstance(value, Mapping) else value

    @model_validator(mode="before")
    @classmethod
    def _derived_fields(cls, values: Any) -> Any:
        """Fold a top-level ``augment`` into ``data``; refuse a ``keras`` block that disagrees with ``params``."""
        if not isinstance(values, Mapping):
            if isinstance(values, BestConfig):
                return values
            raise ValueError(f"a best config must be a JSON object, got {type(values).__name__}")
        values = dict(values)
        augment = values.pop("augment", None)
        if augment is not None:
            data = values.get("data")
            data = dict(data) if isinstance(data, Mapping) else (data.model_dump() if data is not None else {})
            if "augment" in data and data["augment"] != augment:
                raise ValueError(f"augment ({augment!r}) disagrees with data.augment ({data['augment']!r})")
            values["data"] = {**data, "augment": augment}
        keras_values = values.pop("keras", None)
        if keras_values is not None:
            _check_keras_values(keras_values, values.get("params", values.get("regularization")))
        return values

    def uncertainty_lines(self, metric: str | None = None) -> list[str]:
        """:meth:`Uncertainty.uncertainty_lines` in this config's metric."""
        return super().uncertainty_lines(metric or self.metric)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the keys of the service's ``best`` endpoint, less ``best_since`` and ``direction``)."""
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "BestConfig":
        """Read the JSON form; a missing or out-of-range field raises ``ValueError`` naming it."""
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise ValueError(describe(error)) from None


def _check_keras_values(keras_values: Any, params: Any) -> None:
    """A ``keras`` block that disagrees with ``params`` means a hand edit that would be silently ignored."""
    if not isinstance(keras_values, Mapping):
        raise ValueError(f"keras must be an object, got {type(keras_values).__name__}")
    try:
        regularization = params if isinstance(params, RegularizationConfig) else RegularizationConfig.from_dict(params)
    except (TypeError, ValueError):
        return  # params itself is wrong: its own validation names the field
    expected = regularization.keras_values()
    for name, value in keras_values.items():
        if name not in expected:
            raise ValueError(f"keras has unknown field {name!r}; expected {sorted(expected)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isclose(
            value, expected[name], rel_tol=1e-9, abs_tol=1e-15
        ):
            raise ValueError(
                f"keras.{name} ({value!r}) disagrees with params ({expected[name]!r}); "
                "edit params (weight_decay, l1_ratio, dropout_*) and drop or fix the keras block"
            )


def describe(error: ValidationError) -> str:
    """One line, problems joined by '; ': ``field.path: message``, or our own check's message (it names the field)."""
    parts = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        if item["type"] == "value_error":  # our own checks: the message names the field already
            parts.append(str(item["msg"]).removeprefix("Value error, "))
        else:
            parts.append(f"{location}: {item['msg']}" if location else str(item["msg"]))
    return "; ".join(parts)
