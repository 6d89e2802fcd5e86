"""The two CIFAR-10 convnets, declared once as Keras-free data.

:data:`ARCHITECTURES` lists, per network, the layers between the input's ``Rescaling(1/255)`` and the
classifier (``Dense(num_classes, softmax)``, always last). Everything else reads it:
:func:`trainer.build_model` and the search model (:mod:`trainer._models`), the export's
``keras_settings`` and ``python_snippet`` (:mod:`trainer._export`), and :data:`MODELS`.

``baseline`` is the CIFAR-10 network of the book's project (``base_hidden_units = 32``)::

    block 1: [Conv2D(32, 3x3, same) -> ReLU -> BatchNormalization] x 2 -> MaxPool(2) -> Dropout(dropout_conv)
    block 2: [Conv2D(64, 3x3, same) -> ReLU -> BatchNormalization] x 2 -> MaxPool(2) -> Dropout(dropout_conv)
    block 3: [Conv2D(128, 3x3, same) -> ReLU -> BatchNormalization] x 2 -> MaxPool(2) -> Dropout(dropout_conv)
    Flatten -> Dropout(dropout_dense) -> Dense(10, softmax)

309,290 parameters at width 1. The book puts a dropout after each pooling block (rates 0.2/0.3/0.4
there); here all three take ``dropout_conv``. ``dropout_dense`` is the dropout on the classifier's
input (after Flatten); it follows block 3's ``dropout_conv`` directly, so that input keeps a unit
with probability (1 - dropout_conv) * (1 - dropout_dense).

``vgg`` is the VGG-like convnet of the Keras guide (``valid`` padding, no BatchNorm)::

    [Conv2D(32, 3x3) -> ReLU] x 2 -> MaxPool(2) -> Dropout(dropout_conv)
    [Conv2D(64, 3x3) -> ReLU] x 2 -> MaxPool(2) -> Dropout(dropout_conv)
    Flatten -> Dense(256, ReLU) -> Dropout(dropout_dense) -> Dense(10, softmax)

Every Conv2D and Dense kernel carries ``L1L2(l1=weight_decay*l1_ratio, l2=weight_decay*(1-l1_ratio))``
(biases and BatchNorm parameters are not penalized, as in the book). ``width`` multiplies the
number of filters and hidden units (:func:`scaled`, at least 1), for quick runs. A dropout follows
a pooling layer, Flatten or a Dense layer, never a conv directly (checked on import).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

__all__ = ["ARCHITECTURES", "Architecture", "LayerSpec", "MIN_WIDTH", "MODELS", "scaled"]

LayerKind = Literal["conv", "relu", "batchnorm", "pool", "dropout", "flatten", "dense"]


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One layer: ``units`` are the filters (conv) or units (dense) at width 1; ``rate`` names a dropout's knob
    (a ``rate`` knob of :data:`trainer.SEARCH_SPACE`, checked there)."""

    kind: LayerKind
    name: str
    units: int = 0
    padding: str = "same"
    rate: str | None = None

    @property
    def regularized(self) -> bool:
        """Whether the layer has a kernel (and so the L1L2 regularizer)."""
        return self.kind in ("conv", "dense")


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str
    layers: tuple[LayerSpec, ...]  # after Rescaling, before the classifier
    #: Where a rate knob's dropouts sit in this network, in words (for the exports), where it says more than the
    #: knob's own ``Effect.where``.
    where: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def scaled_layers(self, width: float) -> list[LayerSpec]:
        """The layers with ``units`` after the width multiplier."""
        return [dataclasses.replace(layer, units=scaled(layer.units, width)) if layer.units else layer for layer in self.layers]


def scaled(units: int, width: float) -> int:
    """Filters/units after the width multiplier (never below 1)."""
    return max(1, int(round(units * width)))


def _conv_block(block: int, filters: int, padding: str, batch_norm: bool) -> tuple[LayerSpec, ...]:
    layers: list[LayerSpec] = []
    for index in (1, 2):
        layers.append(LayerSpec("conv", f"block{block}_conv{index}", filters, padding))
        layers.append(LayerSpec("relu", f"block{block}_relu{index}"))
        if batch_norm:
            layers.append(LayerSpec("batchnorm", f"block{block}_bn{index}"))
    layers.append(LayerSpec("pool", f"block{block}_pool"))
    layers.append(LayerSpec("dropout", f"block{block}_dropout", rate="dropout_conv"))
    return tuple(layers)


ARCHITECTURES: dict[str, Architecture] = {
    "baseline": Architecture(
        name="baseline",
        layers=(
            *_conv_block(1, 32, "same", batch_norm=True),
            *_conv_block(2, 64, "same", batch_norm=True),
            *_conv_block(3, 128, "same", batch_norm=True),
            LayerSpec("flatten", "flatten"),
            LayerSpec("dropout", "classifier_dropout", rate="dropout_dense"),
        ),
        where={"dropout_dense": "on the classifier's input, after Flatten"},
    ),
    "vgg": Architecture(
        name="vgg",
        layers=(
            *_conv_block(1, 32, "valid", batch_norm=False),
            *_conv_block(2, 64, "valid", batch_norm=False),
            LayerSpec("flatten", "flatten"),
            LayerSpec("dense", "dense", 256),
            LayerSpec("dropout", "classifier_dropout", rate="dropout_dense"),
        ),
        where={"dropout_dense": "after the hidden Dense layer, before the classifier"},
    ),
}

#: The networks the trainer can build.
MODELS: tuple[str, ...] = tuple(ARCHITECTURES)

#: Widths must be above this for every layer of every network to keep at least one unit of its own:
#: ``round(units * width) >= 1`` for the narrowest layer (``round(0.5)`` is 0, so the bound is exclusive).
MIN_WIDTH: float = 0.5 / min(layer.units for architecture in ARCHITECTURES.values() for layer in architecture.layers if layer.units)


def _check(architecture: Architecture) -> None:
    """The domain's rule: a dropout after pooling, Flatten or Dense, never right after a conv."""
    for before, layer in zip(architecture.layers, architecture.layers[1:]):
        if layer.kind == "dropout" and before.kind not in ("pool", "flatten", "dense"):
            raise ValueError(f"{architecture.name}: dropout {layer.name!r} must not follow {before.kind} {before.name!r}")


for _architecture in ARCHITECTURES.values():
    _check(_architecture)
