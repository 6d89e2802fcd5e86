"""The regularization search space, declared once as data: each knob with its effect.

Each row of :data:`SEARCH_SPACE` is a knob (:class:`ParamSpec`): its default, bounds, validity range
and its :class:`Effect`, where it acts in the network: a share of the kernel regularizer (``penalty``)
or the rate of the dropout layers that :mod:`trainer._architecture` tags with its name (``rate``).
Everything else loops over this table: the API schema (service), the Optuna distributions (the
worker's objective), :class:`RegularizationConfig` (its fields; a knob missing from a stored config
takes its default, so old best configs and warm starts keep loading), the search model's variables
(:class:`trainer._models.Knobs`), the export formats and the snippet (:mod:`trainer._export`), the
CSV columns and the CLI summary. ``tests/handoff/test_handoff_knobs.py`` adds a throwaway knob to the
table and sees it reach the network and every export.

How the numbers map to Keras and to the textbook
-------------------------------------------------
``weight_decay`` is the total penalty strength and ``l1_ratio`` splits it::

    l1 = weight_decay * l1_ratio
    l2 = weight_decay * (1 - l1_ratio)
    kernel_regularizer = keras.regularizers.L1L2(l1=l1, l2=l2)   # on every Conv2D and Dense kernel

Keras adds ``l1 * sum(|w|) + l2 * sum(w**2)`` to *each batch's mean loss*; it does not divide by the
number of training examples n. The textbook writes the L2 cost as E = E0 + lambda/(2n) * sum(w**2),
with E0 the mean loss over the n training examples, so the two forms agree when::

    l2 = lambda / (2 n)        i.e.  lambda = 2 n * l2
    l1 = lambda_1 / n          i.e.  lambda_1 = n * l1

``lambda`` (the textbook's regularization parameter) is the quantity that stays fixed when the
training set grows; the Keras coefficients shrink as 1/n. :func:`rescale_for_train_size` is the one
place that applies this rule (used by ``regsearch retrain`` when it moves from the study's subset to
the full training set). This is the one explanation of the rule; other docstrings point here.

The gradient of the L2 term is ``2 * l2 * w = (lambda / n) * w``, so plain SGD performs the
textbook update W <- W - eta * (dE0/dW + (lambda/n) * W): weights decay towards zero but rarely
reach it. The L1 term pushes each weight towards zero by a constant amount and drives many of
them to (near) zero, which is why training reports the share of |w| < 1e-3.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

from trainer._architecture import ARCHITECTURES, MODELS

__all__ = [
    "MODELS",
    "PENALTY_KNOBS",
    "RATE_KNOBS",
    "Effect",
    "ParamSpec",
    "SEARCH_SPACE",
    "SEARCH_SPACE_BY_NAME",
    "RegularizationConfig",
    "rescale_for_train_size",
    "validate_bounds",
]



@dataclasses.dataclass(frozen=True)
class Effect:
    """Where a knob acts in the network.

    ``penalty``: the kernel regularizer ``L1L2(l1, l2)`` of every Conv2D and Dense layer, split by the
    two penalty knobs (``l1 = weight_decay * l1_ratio``, ``l2 = weight_decay * (1 - l1_ratio)``);
    ``rate``: the rate of every Dropout layer the architecture tags with the knob's name, ``where`` saying
    where those sit (an architecture may say it more precisely: ``Architecture.where``).
    """

    kind: Literal["penalty", "rate"]
    where: str


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One searchable hyperparameter.

    ``low``/``high`` are the default search bounds; ``minimum``/``maximum`` the values a config
    may take at all (with ``*_inclusive`` saying whether the end point itself is allowed).
    """

    name: str
    default: float  # the value of the CIFAR-10 baseline / a sensible starting point
    low: float  # default lower search bound
    high: float  # default upper search bound
    log: bool  # searched on a log scale
    minimum: float
    minimum_inclusive: bool
    maximum: float
    maximum_inclusive: bool
    description: str
    effect: Effect

    def check(self, value: Any, what: str | None = None) -> float:
        """Return ``value`` as a float, or raise ``ValueError`` naming the field."""
        label = what or self.name
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{label} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{label} must be finite, got {value!r}")
        too_low = value < self.minimum or (value == self.minimum and not self.minimum_inclusive)
        too_high = value > self.maximum or (value == self.maximum and not self.maximum_inclusive)
        if too_low or too_high:
            raise ValueError(f"{label} must be in {self.range_text()}, got {value!r}")
        return value

    def range_text(self) -> str:
        left = "[" if self.minimum_inclusive else "("
        right = "]" if self.maximum_inclusive else ")"
        high = "inf" if math.isinf(self.maximum) else f"{self.maximum:g}"
        return f"{left}{self.minimum:g}, {high}{right}"


SEARCH_SPACE: tuple[ParamSpec, ...] = (
    ParamSpec(
        name="weight_decay",
        default=1e-4,  # the book's CIFAR-10 baseline
        low=1e-6,
        high=1e-2,
        log=True,
        minimum=0.0,
        minimum_inclusive=False,
        # At 1.0 the penalty on a unit weight already equals the cross-entropy of a random guess (ln 10 ~ 2.3
        # over a few weights): beyond it the fit only shrinks weights to zero, so no search needs more.
        maximum=1.0,
        maximum_inclusive=True,
        description="Total regularization strength (l1 + l2 of keras.regularizers.L1L2), > 0 and at most 1.",
        effect=Effect("penalty", "every Conv2D and Dense kernel (biases and BatchNormalization are not penalized)"),
    ),
    ParamSpec(
        name="l1_ratio",
        default=0.0,  # pure L2, as in the baseline
        low=0.0,
        high=1.0,
        log=False,
        minimum=0.0,
        minimum_inclusive=True,
        maximum=1.0,
        maximum_inclusive=True,
        description="Share of weight_decay given to L1: l1 = weight_decay*l1_ratio, l2 = weight_decay*(1-l1_ratio).",
        effect=Effect("penalty", "every Conv2D and Dense kernel (biases and BatchNormalization are not penalized)"),
    ),
    ParamSpec(
        name="dropout_conv",
        default=0.3,
        low=0.3,
        high=0.5,
        log=False,
        minimum=0.0,
        minimum_inclusive=True,
        maximum=1.0,
        maximum_inclusive=False,
        description="Dropout rate after each pooling block of the convnet.",
        effect=Effect("rate", "after each MaxPooling2D block"),
    ),
    ParamSpec(
        name="dropout_dense",
        default=0.5,
        low=0.3,
        high=0.5,
        log=False,
        minimum=0.0,
        minimum_inclusive=True,
        maximum=1.0,
        maximum_inclusive=False,
        description="Dropout rate before the classifier (after the dense hidden layer in vgg).",
        effect=Effect("rate", "before the classifier"),
    ),
)

SEARCH_SPACE_BY_NAME: dict[str, ParamSpec] = {spec.name: spec for spec in SEARCH_SPACE}
#: The knobs that split the kernel regularizer (weight_decay, l1_ratio) and those that are a dropout rate.
PENALTY_KNOBS: tuple[str, ...] = tuple(spec.name for spec in SEARCH_SPACE if spec.effect.kind == "penalty")
RATE_KNOBS: tuple[str, ...] = tuple(spec.name for spec in SEARCH_SPACE if spec.effect.kind == "rate")
assert PENALTY_KNOBS == ("weight_decay", "l1_ratio"), "the kernel regularizer is split by weight_decay and l1_ratio"
for _architecture in ARCHITECTURES.values():  # every dropout takes a rate knob of this table
    for _layer in _architecture.layers:
        if _layer.kind == "dropout" and _layer.rate not in RATE_KNOBS:
            raise ValueError(f"{_architecture.name}: dropout {_layer.name!r} takes {_layer.rate!r}, not a rate knob {RATE_KNOBS}")


def where(knob: str, model: str) -> str:
    """Where ``knob`` acts in network ``model``, in words (the architecture's own words, else the knob's)."""
    return ARCHITECTURES[model].where.get(knob, SEARCH_SPACE_BY_NAME[knob].effect.where)


def validate_bounds(name: str, low: Any, high: Any) -> tuple[float, float]:
    """Check a search range ``[low, high]`` for parameter ``name``; ``ValueError`` names the field."""
    spec = SEARCH_SPACE_BY_NAME.get(name)
    if spec is None:
        raise ValueError(f"unknown search parameter {name!r}; expected one of {sorted(SEARCH_SPACE_BY_NAME)}")
    low = spec.check(low, f"{name}.low")
    high = spec.check(high, f"{name}.high")
    if low > high:
        raise ValueError(f"{name}: low ({low:g}) must not exceed high ({high:g})")
    return low, high


class _Config:
    """The behaviour of :class:`RegularizationConfig`, whose fields are the rows of :data:`SEARCH_SPACE`."""

    weight_decay: float
    l1_ratio: float

    def __post_init__(self) -> None:
        for spec in SEARCH_SPACE:
            object.__setattr__(self, spec.name, spec.check(getattr(self, spec.name)))

    @property
    def l1(self) -> float:
        """The Keras L1 coefficient: weight_decay * l1_ratio."""
        return self.weight_decay * self.l1_ratio

    @property
    def l2(self) -> float:
        """The Keras L2 coefficient: weight_decay * (1 - l1_ratio)."""
        return self.weight_decay * (1.0 - self.l1_ratio)

    def to_dict(self) -> dict[str, float]:
        return {spec.name: getattr(self, spec.name) for spec in SEARCH_SPACE}

    def keras_values(self) -> dict[str, float]:
        """The values as Keras layers take them: the kernel regularizer's ``l1`` and ``l2``, then every rate."""
        return {"l1": self.l1, "l2": self.l2, **{name: getattr(self, name) for name in RATE_KNOBS}}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RegularizationConfig":
        """Build from a mapping of search parameters; a knob it lacks takes its default (a config stored before
        the knob existed), an unknown one is a ``ValueError`` naming it."""
        if not isinstance(values, Mapping):
            raise ValueError(f"a regularization config must be a mapping, got {type(values).__name__}")
        unknown = sorted(set(values) - set(SEARCH_SPACE_BY_NAME))
        if unknown:
            raise ValueError(f"config has unknown field(s): {', '.join(unknown)}")
        return cls(**{spec.name: values[spec.name] for spec in SEARCH_SPACE if spec.name in values})


#: A point of the search space: one float field per row of :data:`SEARCH_SPACE` (its default the row's),
#: validated on construction (``ValueError`` names the field).
RegularizationConfig = dataclasses.make_dataclass(
    "RegularizationConfig",
    [(spec.name, float, dataclasses.field(default=spec.default)) for spec in SEARCH_SPACE],
    bases=(_Config,),
    frozen=True,
)
RegularizationConfig.__module__ = __name__  # (make_dataclass's module= needs Python 3.12)
RegularizationConfig.__doc__ = "A point of the search space; validated on construction (``ValueError`` names the field)."


def rescale_for_train_size(config: RegularizationConfig, n_from: int, n_to: int) -> RegularizationConfig:
    """Carry a config found on ``n_from`` training examples over to ``n_to`` examples.

    Keeps the textbook's lambda fixed (the lambda/(2n) rule, explained in this module's docstring), so
    ``weight_decay`` scales by ``n_from / n_to``; the L1/L2 mix and the dropout rates are unchanged.
    """
    if n_from <= 0 or n_to <= 0:
        raise ValueError(f"training set sizes must be positive, got n_from={n_from}, n_to={n_to}")
    return dataclasses.replace(config, weight_decay=config.weight_decay * n_from / n_to)
