"""The limits of this server a spec must also meet, refused at POST and stated in the OpenAPI schema.

Everything that holds for every server is declared on the models (``trainer.Recipe``,
``StudySpec``, the search-space bounds) and so is in the schema already. Two limits depend on the
server: ``n_trials`` at most ``REGSEARCH_MAX_TRIALS``, and ``data.train_size`` at most the training
images in ``REGSEARCH_DATA_DIR`` (when it is set; counted once, TensorFlow-free, by
:func:`trainer.count_training_images`). :func:`check_server_limits` refuses a spec beyond them with a
422 naming the field; :func:`publish_limits` writes them into the app's OpenAPI schema as ``maximum``.
"""

from __future__ import annotations

import functools
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from service.config import Settings

__all__ = ["check_server_limits", "publish_limits", "server_limits", "training_images"]


@functools.lru_cache(maxsize=4)
def training_images(data_dir: str | None) -> int | None:
    """Training images in ``data_dir``; None when the server has no data directory or cannot read it
    (the worker then reports the data error itself, with the directory and the files it expected)."""
    if not data_dir:
        return None
    from trainer import DataError, count_training_images

    try:
        return count_training_images(data_dir)
    except (DataError, OSError):
        return None


def server_limits(settings: Settings) -> dict[tuple[str, ...], tuple[int, str]]:
    """``{field path: (maximum, why)}`` for this server."""
    limits = {("n_trials",): (settings.max_trials, "the server's REGSEARCH_MAX_TRIALS")}
    images = training_images(settings.data_dir)
    if images is not None:
        limits[("data", "train_size")] = (images, "the training images in the server's data directory")
    return limits


def check_server_limits(spec: Any, settings: Settings) -> None:
    """Raise a 422 (``RequestValidationError``) naming each field of ``spec`` beyond this server's limits."""
    errors = []
    for path, (maximum, why) in server_limits(settings).items():
        value: Any = spec
        for part in path:
            value = getattr(value, part, None)
            if value is None:  # a PATCH without the field
                break
        if value is not None and value > maximum:
            name = ".".join(path)
            errors.append({"type": "less_than_equal", "loc": ("body", *path), "input": value,
                           "msg": f"{name} must be at most {maximum} ({why})", "ctx": {"le": maximum}})
    if errors:
        raise RequestValidationError(errors)


def publish_limits(app: FastAPI, settings: Settings) -> None:
    """Add this server's limits to the OpenAPI schema (``maximum`` of StudySpec's fields)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.get("components", {}).get("schemas", {})
        owners = {("n_trials",): ("StudySpec", "StudyPatch"), ("data", "train_size"): ("DataRecipe",)}
        for path, (maximum, why) in server_limits(settings).items():
            for owner in owners[path]:
                prop = components.get(owner, {}).get("properties", {}).get(path[-1])
                if prop is None:
                    continue
                for option in prop.get("anyOf", [prop]):
                    if option.get("type") == "integer":
                        option["maximum"] = min(maximum, option.get("maximum", maximum))
                prop["description"] = f"{prop.get('description', '')} This server: at most {maximum} ({why}).".strip()
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
