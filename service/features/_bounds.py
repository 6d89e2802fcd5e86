"""The study's search bounds, read from whichever shape the caller holds (Keras-free)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainer import SEARCH_SPACE

__all__ = ["Bounds", "search_bounds"]

#: ``{param name: (low, high)}`` for every declared search parameter.
Bounds = dict[str, tuple[float, float]]


def search_bounds(space: Any) -> Bounds:
    """``{name: (low, high)}`` from the study's search space.

    ``space`` may be the spec's ``search_space`` (an object with one ``.low``/``.high`` attribute per
    parameter), the Optuna distributions of the study (``service._optuna.distributions(spec)``), or a
    mapping of ``name -> (low, high)``. ``None`` means the trainer's default bounds. Every declared
    parameter must be present (``ValueError`` names a missing one).
    """
    if space is None:
        return {spec.name: (spec.low, spec.high) for spec in SEARCH_SPACE}
    bounds: Bounds = {}
    for spec in SEARCH_SPACE:
        item = space.get(spec.name) if isinstance(space, Mapping) else getattr(space, spec.name, None)
        if item is None:
            raise ValueError(f"search space is missing parameter {spec.name!r}")
        low, high = (item.low, item.high) if hasattr(item, "low") else item
        bounds[spec.name] = (float(low), float(high))
    return bounds
