"""The two CIFAR-10 convnets of :mod:`trainer._architecture`, built as plain Keras or as a reusable search model.

Why two builds of one declaration: :func:`build_model` gives plain Keras layers
(``keras.regularizers.L1L2``, ``keras.layers.Dropout``) for export and production. The search
(:mod:`trainer._train`) instead builds the *same* graph with :class:`TunableL1L2` and
:class:`TunableDropout`, whose coefficients and rates are backend variables: one compiled train step
then serves every trial of a worker, and a new trial only assigns its knobs and re-initialises
the weights. Both compute exactly the same function (same penalty, inverted dropout with the same
rate); the layer and weight order are identical, so weights move freely between the two.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import keras

from trainer._architecture import ARCHITECTURES, LayerSpec, scaled
from trainer._best import BestConfig
from trainer._recipe import Recipe
from trainer._space import RegularizationConfig

__all__ = [
    "Knobs", "TunableDropout", "TunableL1L2", "build_model", "build_search_model", "penalized_kernels", "plain_weights", "scaled",
    "tunable_dropouts",
]


# --------------------------------------------------------------------------------------------------
# Variable-backed regularizer and dropout (the search build)
# --------------------------------------------------------------------------------------------------


class Knobs(keras.layers.Layer):
    """The Keras values of one search model (``l1``, ``l2`` and every rate knob: :meth:`RegularizationConfig.keras_values`),
    as non-trainable float32 weights of their own layer.

    The layer is not in the network's graph (``model.layers`` and the layer-by-layer weights are the
    plain model's); :func:`build_search_model` attaches it to the model, so its weights belong to the
    model's state: on JAX the compiled step takes them as inputs like any variable (a value read from
    an untracked variable would be traced into the step as a constant), and a new trial's
    ``assign`` reaches the next step on every backend. :func:`plain_weights` leaves them out.
    """

    def __init__(self, config: RegularizationConfig) -> None:
        super().__init__(name="knobs", dtype="float32", trainable=False)
        for name in config.keras_values():
            setattr(self, name, self.add_weight(shape=(), initializer="zeros", dtype="float32", trainable=False, name=name))
        self.built = True
        self.assign(config)

    def assign(self, config: RegularizationConfig) -> None:
        for name, value in config.keras_values().items():
            getattr(self, name).assign(float(value))

    def call(self, inputs):  # never called: a holder of variables
        return inputs


def plain_weights(model: keras.Model) -> list:
    """A search model's weights without its :class:`Knobs`: what :func:`build_model`'s ``set_weights`` takes."""
    knobs = {id(variable) for variable in model.knobs.weights} if isinstance(getattr(model, "knobs", None), Knobs) else set()
    return [keras.ops.convert_to_numpy(variable.value) for variable in model.weights if id(variable) not in knobs]


class TunableL1L2(keras.regularizers.Regularizer):
    """``l1 * sum(|w|) + l2 * sum(w**2)`` (what ``keras.regularizers.L1L2`` computes) with variable coefficients."""

    def __init__(self, knobs: Knobs) -> None:
        self.knobs = knobs

    def __call__(self, x):
        x = keras.ops.cast(x, "float32")
        return self.knobs.l1 * keras.ops.sum(keras.ops.abs(x)) + self.knobs.l2 * keras.ops.sum(keras.ops.square(x))

    def get_config(self) -> dict[str, float]:
        return {"l1": float(keras.ops.convert_to_numpy(self.knobs.l1.value)), "l2": float(keras.ops.convert_to_numpy(self.knobs.l2.value))}


class TunableDropout(keras.layers.Layer):
    """Inverted dropout (as ``keras.layers.Dropout``) whose rate is a backend variable.

    Keeps a unit when a uniform draw is >= rate and scales kept units by 1/(1 - rate); identity at
    inference. ``which`` names the knob (a rate knob: ``"dropout_conv"``, ``"dropout_dense"``).
    """

    def __init__(self, knobs: Knobs, which: str, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        object.__setattr__(self, "_knobs", knobs)  # not tracked: the knobs' weights are the model's, not this layer's
        self.which = which
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    @property
    def rate(self) -> keras.Variable:
        return getattr(self._knobs, self.which)

    def call(self, inputs, training=False):
        if not training:
            return inputs
        rate = keras.ops.cast(self.rate, inputs.dtype)
        draw = keras.random.uniform(keras.ops.shape(inputs), dtype=inputs.dtype, seed=self.seed_generator)
        keep = keras.ops.cast(draw >= rate, inputs.dtype)
        return inputs * keep / (1.0 - rate)

    def compute_output_shape(self, input_shape):
        return input_shape


# --------------------------------------------------------------------------------------------------
# The one architecture definition
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Parts:
    """How the architecture gets its regularizer and dropouts (plain Keras, or variable-backed)."""

    regularizer: Callable[[], Any]
    dropout: Callable[[str, str], keras.layers.Layer]  # (which knob, layer name) -> layer
    dtype: Any = None  # dtype policy of the hidden layers (e.g. "mixed_bfloat16")


def _check_shape(model: str, width: float, input_shape: Any, num_classes: Any) -> None:
    """``ValueError`` naming the field: model and width by the :class:`Recipe`'s bounds, then shape and classes."""
    Recipe(model=model, width=width)
    if (
        not isinstance(input_shape, (tuple, list))
        or len(input_shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape)
    ):
        raise ValueError(f"input_shape must be (height, width, channels) of positive ints, got {input_shape!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")


def _layer(spec: LayerSpec, parts: _Parts) -> keras.layers.Layer:
    """The Keras layer of one declared layer (``units`` already scaled)."""
    dtype = parts.dtype
    if spec.kind == "conv":
        return keras.layers.Conv2D(
            spec.units, 3, padding=spec.padding, kernel_regularizer=parts.regularizer(), name=spec.name, dtype=dtype
        )
    if spec.kind == "dense":
        return keras.layers.Dense(
            spec.units, activation="relu", kernel_regularizer=parts.regularizer(), name=spec.name, dtype=dtype
        )
    if spec.kind == "dropout":
        return parts.dropout(spec.rate, spec.name)
    simple = {
        "relu": lambda: keras.layers.Activation("relu", name=spec.name, dtype=dtype),
        "batchnorm": lambda: keras.layers.BatchNormalization(name=spec.name, dtype=dtype),
        "pool": lambda: keras.layers.MaxPooling2D(2, name=spec.name, dtype=dtype),
        "flatten": lambda: keras.layers.Flatten(name=spec.name, dtype=dtype),
    }
    return simple[spec.kind]()


def _network(model: str, width: float, input_shape: tuple[int, int, int], num_classes: int, parts: _Parts) -> keras.Model:
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale", dtype=parts.dtype)(inputs)
    for spec in ARCHITECTURES[model].scaled_layers(width):
        x = _layer(spec, parts)(x)
    # The classifier computes in float32 under mixed precision so the softmax and the loss stay stable.
    outputs = keras.layers.Dense(
        num_classes,
        activation="softmax",
        kernel_regularizer=parts.regularizer(),
        name="classifier",
        dtype=None if parts.dtype is None else "float32",
    )(x)
    return keras.Model(inputs, outputs, name=model)


def _resolve(config: Any, model: str | None, width: float | None) -> tuple[RegularizationConfig, str, float]:
    if isinstance(config, BestConfig):
        return config.regularization, model or config.model, config.width if width is None else width
    if isinstance(config, RegularizationConfig):
        return config, model or "baseline", 1.0 if width is None else width
    raise ValueError(f"config must be a RegularizationConfig or BestConfig, got {type(config).__name__}")


def build_model(
    config: RegularizationConfig | BestConfig,
    model: str | None = None,
    *,
    width: float | None = None,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    num_classes: int = 10,
) -> keras.Model:
    """Build ``model`` (``"baseline"`` or ``"vgg"``) as a plain, uncompiled Functional Keras model.

    ``config`` is a :class:`RegularizationConfig`, or a :class:`BestConfig` whose ``model`` and
    ``width`` are used unless given here (``model`` defaults to ``"baseline"``, ``width`` to 1).
    Every Conv2D/Dense kernel gets ``keras.regularizers.L1L2(l1=config.l1, l2=config.l2)``; the
    dropouts are ``keras.layers.Dropout`` placed as :mod:`trainer._architecture` declares. The model takes raw
    pixel values (0..255, as :func:`trainer.load_cifar10` returns them) and outputs class
    probabilities. Raises ``ValueError`` naming the field for an unknown model or bad arguments.
    """
    regularization, model, width = _resolve(config, model, width)
    _check_shape(model, width, input_shape, num_classes)
    rates = regularization.keras_values()
    parts = _Parts(
        regularizer=lambda: keras.regularizers.L1L2(l1=regularization.l1, l2=regularization.l2),
        dropout=lambda which, name: keras.layers.Dropout(rates[which], name=name),
    )
    return _network(model, float(width), tuple(input_shape), num_classes, parts)


def penalized_kernels(model: keras.Model) -> list[keras.Variable]:
    """The kernels the penalty applies to (every Conv2D's and Dense's), in layer order."""
    return [layer.kernel for layer in model.layers if hasattr(layer, "kernel")]


def tunable_dropouts(model: keras.Model) -> list[TunableDropout]:
    """A search model's dropout layers, in layer order."""
    return [layer for layer in model.layers if isinstance(layer, TunableDropout)]


def build_search_model(
    knobs: Knobs,
    model: str,
    *,
    width: float = 1.0,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    num_classes: int = 10,
    dtype: Any = None,
) -> keras.Model:
    """The same network as :func:`build_model`, with regularization and dropout read from ``knobs``."""
    _check_shape(model, width, input_shape, num_classes)
    regularizer = TunableL1L2(knobs)  # one shared instance: same coefficients on every kernel
    parts = _Parts(
        regularizer=lambda: regularizer,
        dropout=lambda which, name: TunableDropout(knobs, which, name=name, dtype=dtype),
        dtype=dtype,
    )
    network = _network(model, float(width), tuple(input_shape), num_classes, parts)
    network.knobs = knobs  # tracked: the knobs' weights are part of the model's state (see Knobs)
    return network
