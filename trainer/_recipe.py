"""The training recipe and the per-trial metrics, each declared once (Keras-free).

:class:`Recipe` is how a trial trains, everything but the regularization: the network, its width,
the epoch budget, the batch size, the learning rate, the data and the seed. The service's
``StudySpec`` (the API), the trainer's ``TrainSettings``, the hand-off's ``BestConfig`` and the
command-line flags are all built from it (by inheritance or composition), so their defaults and
bounds agree by construction.

:class:`TrialMetrics` names what one training reports about a trial. The trainer's result, the
worker's user attributes, the trials route and its response model all use it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from trainer._architecture import MODELS

__all__ = ["MAX_SEED", "DataRecipe", "Recipe", "TrialMetrics"]

#: Seeds must fit numpy's and TensorFlow's seeding: [0, 2**32).
MAX_SEED = 2**32 - 1


class DataRecipe(BaseModel):
    """Which CIFAR-10 images a trial trains and validates on."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    train_size: int | None = Field(
        None, ge=20, le=50_000, description="Training images drawn (class-balanced) before the validation split; null: all."
    )
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="Share of the drawn images held out for validation.")
    augment: bool = Field(False, description="Random flips and shifts during training.")


class Recipe(BaseModel):
    """How a trial trains (everything but the regularization). Every field has a default."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: Literal[MODELS] = Field("baseline", description="Which convnet to train.")  # type: ignore[valid-type]
    width: float = Field(1.0, gt=0.0, le=8.0, description="Width multiplier of the network's layers.")
    epochs: int = Field(10, ge=1, le=1000, description="The most epochs a trial trains (pruning may stop it earlier).")
    batch_size: int = Field(128, ge=1, le=8192, description="Images per training step.")
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0, description="Adam learning rate.")
    data: DataRecipe = Field(default_factory=DataRecipe)
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seeds the data split and order and the networks' initialisation.")

    def recipe(self) -> "Recipe":
        """Only the recipe's fields (of a ``StudySpec``, ``BestConfig`` or ``TrainSettings``), as a :class:`Recipe`."""
        return Recipe.model_validate(self.model_dump(include=set(Recipe.model_fields)))


class TrialMetrics(BaseModel):
    """What one training reports about a trial (stored as the trial's user attributes)."""

    model_config = ConfigDict(extra="ignore")

    val_accuracy: float | None = Field(None, description="Validation accuracy after the last epoch.")
    train_accuracy: float | None = Field(
        None, description="Training accuracy after the last epoch, in inference mode on a fixed training sample."
    )
    gap: float | None = Field(
        None, description="train_accuracy - val_accuracy after the last epoch (both in inference mode): the generalization gap."
    )
    images_per_second: float | None = None
    wall_time_s: float | None = None
    epochs_run: int | None = None
    train_size: int | None = Field(None, description="Images the trial trained on (after the validation split).")
