"""Training settings and argument checks: plain Python, so the command line can read them without Keras."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from trainer._space import MODELS

__all__ = ["PRECISIONS", "TrainSettings", "check_model_args"]

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


def check_model_args(model: str, width: Any, input_shape: Any = (32, 32, 3), num_classes: Any = 10) -> None:
    """``ValueError`` naming the field for an unknown model or a bad width/shape/class count."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {list(MODELS)}, got {model!r}")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ValueError(f"width must be a positive number, got {width!r}")
    if (
        not isinstance(input_shape, (tuple, list))
        or len(input_shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape)
    ):
        raise ValueError(f"input_shape must be (height, width, channels) of positive ints, got {input_shape!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """How to train (everything but the regularization). Invalid values raise ``ValueError`` naming the field.

    ``precise_bn_images``: training images used to recompute BatchNorm statistics before each
    validation (0 turns it off and validates with the moving averages). ``reuse_compiled``: reuse this
    process's compiled model for this graph (see :mod:`trainer._train`).
    """

    model: str = "baseline"
    width: float = 1.0
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 1e-3
    augment: bool = False
    seed: int = 0
    precision: str = "auto"
    precise_bn_images: int = 512
    reuse_compiled: bool = True

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {list(MODELS)}, got {self.model!r}")
        check_model_args(self.model, self.width)

        def positive_int(name: str, allow_zero: bool = False) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (0 if allow_zero else 1):
                raise ValueError(f"{name} must be an int >= {0 if allow_zero else 1}, got {value!r}")

        positive_int("epochs")
        positive_int("batch_size")
        positive_int("precise_bn_images", allow_zero=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        rate = self.learning_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"learning_rate must be a positive number, got {rate!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        for name in ("augment", "reuse_compiled"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
