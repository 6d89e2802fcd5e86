"""Training settings: the :class:`Recipe` plus the knobs only the trainer has (plain Python, no Keras)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from trainer._recipe import Recipe

__all__ = ["PRECISIONS", "TrainSettings"]

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


class TrainSettings(Recipe):
    """How to train (everything but the regularization). Invalid values raise ``ValueError`` naming the field.

    The recipe's fields (model, width, epochs, batch_size, learning_rate, data, seed) are
    :class:`Recipe`'s; ``data.train_size`` and ``data.val_fraction`` say how the data was drawn
    (:func:`trainer.load_cifar10` takes them), ``data.augment`` applies here. Build one from a study's
    recipe with ``TrainSettings(**recipe.recipe().model_dump(), precision=...)``.
    """

    model_config = ConfigDict(frozen=True)

    precision: Literal[PRECISIONS] = Field("auto", description="Keras dtype policy; auto: see trainer._train.resolve_precision.")  # type: ignore[valid-type]
    precise_bn_images: int = Field(
        256, ge=0, description="Training images used to recompute BatchNorm statistics before each validation (0: off)."
    )
    gap_sample_images: int = Field(
        2000, ge=1, description="Most training images (a fixed sample) the generalization gap is measured on, in inference "
        "mode; the sample is no larger than the validation set.",
    )
    reuse_compiled: bool = Field(True, description="Reuse this process's compiled model for this graph (see trainer._train).")

    @classmethod
    def from_recipe(cls, recipe: Recipe, **overrides: Any) -> "TrainSettings":
        """``recipe``'s fields (only those), with the given ``overrides`` that are not None (a recipe field or a knob)."""
        values = recipe.recipe().model_dump()
        values.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
