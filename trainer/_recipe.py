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

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict

from trainer._architecture import MIN_WIDTH, MODELS

__all__ = ["Integer", "Number", "MAX_SEED", "MAX_VAL_FRACTION", "MIN_TRAIN_SIZE", "DataRecipe", "Recipe", "TrialMetrics"]

#: Seeds must fit numpy's and TensorFlow's seeding: [0, 2**32).
MAX_SEED = 2**32 - 1

# What the stratified split (trainer._data._stratified_split) needs to leave every class at least one
# image in both splits: it draws train_size class-balanced (at least MIN_TRAIN_SIZE // 10 = 2 a class)
# and holds out max(1, round(n * val_fraction)) of a class of n. With n >= 2 that leaves a training
# image exactly when val_fraction < 0.75 (round(2 * 0.75) = 2), so these two bounds make every
# combination runnable and the schema can state them.


def _not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


#: JSON numbers of a spec: a boolean is not one (pydantic's lax mode would read true as 1).
Number = Annotated[float, Strict()]
Integer = Annotated[int, BeforeValidator(_not_a_boolean)]

MIN_TRAIN_SIZE = 2 * 10  # two images a class of CIFAR-10's ten
MAX_VAL_FRACTION = 0.75  # exclusive


class DataRecipe(BaseModel):
    """Which CIFAR-10 images a trial trains and validates on."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    train_size: Annotated[int, Field(ge=MIN_TRAIN_SIZE, le=50_000), BeforeValidator(_not_a_boolean)] | None = Field(
        None,
        description="Training images drawn (class-balanced) before the validation split; null: all. "
        "At most the training images the server has.",
    )
    val_fraction: Number = Field(
        0.1, gt=0.0, lt=MAX_VAL_FRACTION,
        description="Share of the drawn images held out for validation (at least one a class in each split).",
    )
    augment: Annotated[bool, Strict()] = Field(False, description="Random flips and shifts during training.")


class Recipe(BaseModel):
    """How a trial trains (everything but the regularization). Every field has a default."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: Literal[MODELS] = Field("baseline", description="Which convnet to train.")  # type: ignore[valid-type]
    width: Number = Field(
        1.0, gt=MIN_WIDTH, le=8.0,
        description=f"Width multiplier of the network's layers (above {MIN_WIDTH:g}: every layer keeps a unit).",
    )
    epochs: Integer = Field(10, ge=1, le=1000, description="The most epochs a trial trains (pruning may stop it earlier).")
    batch_size: Integer = Field(128, ge=1, le=8192, description="Images per training step.")
    learning_rate: Number = Field(1e-3, gt=0.0, le=10.0, description="Adam learning rate.")
    data: DataRecipe = Field(default_factory=DataRecipe)
    seed: Integer = Field(0, ge=0, le=MAX_SEED, description="Seeds the data split and order and the networks' initialisation.")

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
    sparsity: float | None = Field(
        None, description="Share of the trained network's penalized (Conv2D/Dense) kernel weights with |w| < 1e-3, "
        "measured once at the end of the trial (trainer/_sparsity.py).",
    )
    images_per_second: float | None = None
    wall_time_s: float | None = None
    epochs_run: int | None = None
    train_size: int | None = Field(None, description="Images the trial trained on (after the validation split).")
