"""The trained network as a ``.keras`` file, and its regularization read back from a loaded model.

The file holds the plain :func:`trainer.build_model` network (``keras.regularizers.L1L2`` on every
Conv2D/Dense kernel, ``keras.layers.Dropout`` layers) with the trained weights, so
``keras.models.load_model(path)`` loads it with no custom objects and ``model.fit`` goes on training
under the same penalty and rates. The search build (``TunableL1L2``/``TunableDropout``, whose values
live outside the layers) is refused: its file would not load elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["KERAS_SUFFIX", "regularization_of", "save_keras_model"]

KERAS_SUFFIX = ".keras"


def save_keras_model(model_or_result: Any, path: str | os.PathLike) -> Path:
    """Save a trained model (a Keras model, or a :class:`trainer.TrainResult`) to ``path`` (``.keras``).

    ``ValueError`` when ``path`` does not end in ``.keras``, the result kept no weights, or the model
    is a search build.
    """
    import keras

    path = Path(path)
    if path.suffix != KERAS_SUFFIX:
        raise ValueError(f"path must end in {KERAS_SUFFIX}, got {str(path)!r}")
    model = getattr(model_or_result, "model", model_or_result) if not isinstance(model_or_result, keras.Model) else model_or_result
    if not isinstance(model, keras.Model):
        raise ValueError(f"nothing to save: expected a Keras model or a TrainResult with weights, got {type(model_or_result).__name__}")
    for layer in model.layers:
        kind = type(layer).__name__
        regularizer = getattr(layer, "kernel_regularizer", None)
        if kind == "TunableDropout" or (regularizer is not None and type(regularizer).__name__ == "TunableL1L2"):
            raise ValueError(f"layer {layer.name!r} is a search-build layer; save the plain model (TrainResult.model)")
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def regularization_of(model: Any) -> dict[str, float]:
    """The Keras values (``l1``, ``l2`` and every rate knob: :meth:`RegularizationConfig.keras_values`) as the
    model's layers carry them.

    Reads every penalized kernel's ``L1L2`` (they must all agree) and the dropout layers (each takes the
    knob :mod:`trainer._architecture` tags its name with, as :func:`trainer.build_model` names them).
    ``ValueError`` if the layers disagree or one is missing.
    """
    import keras

    from trainer._architecture import ARCHITECTURES
    from trainer._space import RATE_KNOBS

    knob_of = {layer.name: layer.rate for architecture in ARCHITECTURES.values() for layer in architecture.layers if layer.rate}
    coefficients: set[tuple[float, float]] = set()
    rates: dict[str, set[float]] = {name: set() for name in RATE_KNOBS}
    for layer in model.layers:
        regularizer = getattr(layer, "kernel_regularizer", None)
        if regularizer is not None:
            config = regularizer.get_config()
            coefficients.add((float(config.get("l1", 0.0)), float(config.get("l2", 0.0))))
        if isinstance(layer, keras.layers.Dropout) and layer.name in knob_of:
            rates[knob_of[layer.name]].add(float(layer.rate))
    if len(coefficients) != 1 or any(len(values) != 1 for values in rates.values()):
        raise ValueError(
            f"model does not carry one regularization: L1L2 {sorted(coefficients)}, "
            + ", ".join(f"{name} {sorted(values)}" for name, values in rates.items())
        )
    (l1, l2), = coefficients
    return {"l1": l1, "l2": l2, **{name: values.pop() for name, values in rates.items()}}
