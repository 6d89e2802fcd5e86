"""The generalization gap, measured the same way for every trial.

Keras' ``accuracy`` log is the running mean over the epoch's batches, computed in training mode
(dropout on, BatchNorm on batch statistics) while the weights still move; the validation accuracy is
measured after the epoch in inference mode. Their difference mixes the gap with dropout's own noise
(a trial with dropout 0.5 "trains" worse than it predicts), so it is not comparable across
dropout rates: exactly the knob being searched.

:func:`measure_gap` measures both sides alike: the trained network in inference mode (dropout off,
BatchNorm on its population statistics) on a fixed training sample and on the validation set;
``gap = train_accuracy - val_accuracy``. The sample is the first ``sample_size`` images of a
permutation seeded by ``seed``: every trial of a study (same data, same seed) is measured on the
same images. :func:`trainer.train` measures it after every epoch on a sample no larger than the
validation set (``min(TrainSettings.gap_sample_images, len(x_val))``): both sides equally precise, and
the measurement costs no more than the validation itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["DEFAULT_SAMPLE_SIZE", "GapMeasurement", "inference_accuracy", "measure_gap", "train_sample_indices"]

#: Training images measured (capped at the training set); 2,000 gives a standard error of about 1 point.
DEFAULT_SAMPLE_SIZE = 2000


@dataclasses.dataclass(frozen=True)
class GapMeasurement:
    train_accuracy: float
    val_accuracy: float
    gap: float
    sample_size: int

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def train_sample_indices(n_train: int, sample_size: int = DEFAULT_SAMPLE_SIZE, seed: int = 0) -> np.ndarray:
    """The fixed training sample: the first ``min(sample_size, n_train)`` of a permutation seeded by ``seed``."""
    if n_train < 1:
        raise ValueError(f"n_train must be >= 1, got {n_train}")
    if isinstance(sample_size, bool) or not isinstance(sample_size, (int, np.integer)) or sample_size < 1:
        raise ValueError(f"sample_size must be an int >= 1, got {sample_size!r}")
    permutation = np.random.default_rng(seed + 7919).permutation(n_train)
    return np.sort(permutation[: min(int(sample_size), n_train)])


def inference_accuracy(model: Any, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` in inference mode (``training=False``: dropout off, BN moving statistics)."""
    if len(images) == 0:
        raise ValueError("no images to measure accuracy on")
    if len(images) != len(labels):
        raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) differ in length")
    correct = 0
    labels = np.asarray(labels).reshape(-1)
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size], dtype=np.float32)
        probabilities = np.asarray(model.predict_on_batch(batch))  # compiled by the backend, inference mode
        correct += int(np.sum(np.argmax(probabilities, axis=-1) == labels[start : start + batch_size]))
    return correct / len(images)


def measure_gap(
    model: Any,
    data: Any,
    *,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
    batch_size: int = 256,
    val_accuracy: float | None = None,
) -> GapMeasurement:
    """Train accuracy on the fixed sample and validation accuracy, both in inference mode, and their gap.

    ``data``: a :class:`trainer.CifarData` (``x_train``/``y_train``/``x_val``/``y_val``). Pass
    ``val_accuracy`` when it was just measured in inference mode on the same weights (e.g. by
    ``model.evaluate``) to skip measuring it again.
    """
    indices = train_sample_indices(len(data.y_train), sample_size, seed)
    train_accuracy = inference_accuracy(model, data.x_train[indices], data.y_train[indices], batch_size)
    if val_accuracy is None:
        val_accuracy = inference_accuracy(model, data.x_val, data.y_val, batch_size)
    return GapMeasurement(
        train_accuracy=float(train_accuracy),
        val_accuracy=float(val_accuracy),
        gap=float(train_accuracy) - float(val_accuracy),
        sample_size=int(len(indices)),
    )
