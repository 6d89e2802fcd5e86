"""regsearch trainer: the CIFAR-10 convnets under a searchable regularization config.

This package is the only part of regsearch that knows Keras. Importing it is cheap: the search
space (:data:`SEARCH_SPACE`, :class:`RegularizationConfig`) is plain Python, and everything that
needs Keras/TensorFlow is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from trainer._space import (
    MODELS,
    SEARCH_SPACE,
    SEARCH_SPACE_BY_NAME,
    BestConfig,
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
    # training
    "TrainSettings": "trainer._train",
    "TrainResult": "trainer._train",
    "train": "trainer._train",
    # production hand-off
    "load_best": "trainer._export",
    "apply_regularization": "trainer._export",
    "keras_settings": "trainer._export",
    "python_snippet": "trainer._export",
    "BestConfigUnavailable": "trainer._export",
    "retrain": "trainer._retrain",
}

__all__ = [
    "MODELS",
    "SEARCH_SPACE",
    "SEARCH_SPACE_BY_NAME",
    "BestConfig",
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
