"""The study-spec fields of issue 11, as one pydantic mixin for ``StudySpec`` to inherit.

``class StudySpec(Recipe, StudyFeatures): ...`` adds ``reference``, ``enqueue``,
``warm_start_from`` and ``max_gap`` with their validation: each enqueued config is filled from the
defaults and checked against the spec's own ``search_space`` (a bad one is a 422 naming
``enqueue[i].field``), and the stored spec holds the full configs that will run.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, Strict, model_validator

from service.features._warmstart import fill_config
from service.models import SLUG_PATTERN
from trainer import Number

__all__ = ["StudyFeatures"]



class StudyFeatures(BaseModel):
    reference: Annotated[bool, Strict()] = Field(
        True,
        description="Measure the seed's defaults (weight_decay 1e-4, l1_ratio 0, dropout 0.3/0.5, clipped into the "
        "search bounds) as the first trial, never pruned, and report the best's margin over it.",
    )
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=1000,
        description="Configs tried first, in order (after the reference); missing parameters take the defaults. "
        "Values must lie within the study's search bounds.",
    )
    warm_start_from: str | None = Field(
        None,
        json_schema_extra={"pattern": SLUG_PATTERN.pattern},
        description="Name of another study whose complete trials seed the sampler. Refused (422) unless it trained "
        "the same model under the same recipe (width, epochs, batch size, learning rate, data); the seed may differ.",
    )
    max_gap: Number | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Largest acceptable final generalization gap (train minus validation accuracy, both in inference "
        "mode, train on a fixed sample). Trials above it are infeasible and never the best.",
    )

    @model_validator(mode="after")
    def _check_features(self) -> "StudyFeatures":
        space = getattr(self, "search_space", None)
        self.enqueue = [fill_config(config, space, what=f"enqueue[{index}]") for index, config in enumerate(self.enqueue)]
        if self.warm_start_from is not None:
            if not SLUG_PATTERN.match(self.warm_start_from):
                raise ValueError("warm_start_from must be a study name (a slug)")
            if self.warm_start_from == getattr(self, "name", None):
                raise ValueError("warm_start_from must name another study")
        return self
