"""regsearch trainer: the CIFAR-10 convnets under a searchable regularization config.

This package is the only part of regsearch that knows Keras, and a library: it never imports the
service, and takes its data directory and URLs as arguments. Importing it is cheap: the search space
(:data:`SEARCH_SPACE`, :class:`RegularizationConfig`), the architectures (:data:`ARCHITECTURES`), the
training recipe (:class:`Recipe`, :class:`TrainSettings`) and the best config (:class:`BestConfig`)
are plain Python/pydantic, and everything that needs Keras/TensorFlow is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from trainer._architecture import ARCHITECTURES, MODELS
from trainer._best import BestConfig, Uncertainty
from trainer._recipe import DataRecipe, Integer, Number, Recipe, TrialMetrics
from trainer._settings import TrainSettings
from trainer._space import (
    SEARCH_SPACE,
    SEARCH_SPACE_BY_NAME,
    ParamSpec,
    RegularizationConfig,
    rescale_for_train_size,
    validate_bounds,
)

# Public names that need Keras: imported lazily from their private module.
_LAZY: dict[str, str] = {
    # models
    "build_model": "trainer._models",
    # data
    "CifarData": "trainer._data",
    "DataError": "trainer._data",
    "load_cifar10": "trainer._data",
    "count_training_images": "trainer._data",
    # training
    "TrainResult": "trainer._train",
    "train": "trainer._train",
    # the generalization gap and the trained model as a file
    "GapMeasurement": "trainer._gap",
    "measure_gap": "trainer._gap",
    "regularization_of": "trainer._keras_file",
    "save_keras_model": "trainer._keras_file",
    "sparsity": "trainer._sparsity",
    # production hand-off
    "load_best": "trainer._export",
    "apply_regularization": "trainer._export",
    "keras_settings": "trainer._export",
    "python_snippet": "trainer._export",
    "BestConfigUnavailable": "trainer._export",
    "retrain": "trainer._retrain",
}

__all__ = [
    "ARCHITECTURES",
    "MODELS",
    "DataRecipe",
    "Integer",
    "Number",
    "Recipe",
    "TrainSettings",
    "TrialMetrics",
    "SEARCH_SPACE",
    "SEARCH_SPACE_BY_NAME",
    "BestConfig",
    "Uncertainty",
    "ParamSpec",
    "RegularizationConfig",
    "rescale_for_train_size",
    "validate_bounds",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trainer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
