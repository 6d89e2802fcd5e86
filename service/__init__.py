"""regsearch service: the HTTP API, the Optuna workers and the command-line client.

Names are imported on first use, so ``regsearch best`` (the client) never pays for FastAPI,
Optuna or the database drivers, and the API process never imports TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "Settings": "service.config",
    "get_settings": "service.config",
    "create_app": "service.api.main",
    "migrate": "service.db",
    "StudySpec": "service.schemas",
    "Worker": "service.worker",
    "KerasTraining": "service.worker",
    "RegsearchClient": "service.client",
    "ClientError": "service.client",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'service' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
