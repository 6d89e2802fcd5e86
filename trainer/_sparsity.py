"""Sparsity: the share of a network's penalized weights that are near zero (what an L1 penalty raises).

``sparsity = #{w : |w| < SPARSITY_THRESHOLD} / #w`` over every penalized kernel: the kernels of the
Conv2D and Dense layers, the ones :func:`trainer.build_model` gives ``L1L2`` (biases and
BatchNormalization are not penalized, so they are not counted). The threshold is absolute, 1e-3: far
below the typical size of a trained weight of these networks (Glorot-initialized kernels of 3x3x32..128
convolutions start near 0.05), and above the float32 noise of a weight that L1 holds at zero (Adam's
steps jitter such a weight around zero instead of leaving it exactly there).

The trainer measures it after every epoch (``history[i]["sparsity"]``); the trial's own ``sparsity``
(:class:`trainer.TrialMetrics`, stored with the trial by the worker) is the measurement on the trained
network at the end of its last epoch. Pure numpy over the weights: works for any Keras backend and on
weights alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["SPARSITY_THRESHOLD", "penalized_kernels", "sparsity", "weight_stats"]

#: |w| below this counts as zero.
SPARSITY_THRESHOLD = 1e-3


def penalized_kernels(model: Any) -> list[Any]:
    """The kernels a Keras model's layers carry (Conv2D/Dense: the ones ``L1L2`` penalizes), in layer order."""
    return [layer.kernel for layer in model.layers if getattr(layer, "kernel", None) is not None]


def _absolute_values(kernels: Iterable[Any]) -> np.ndarray:
    # A Keras variable's backend array (its ``value``), not the variable: NumPy 2 warns on the variable's __array__.
    arrays = [np.abs(np.asarray(getattr(kernel, "value", kernel), dtype=np.float64)).ravel() for kernel in kernels]
    if not arrays or sum(array.size for array in arrays) == 0:
        raise ValueError("no penalized weights to measure")
    return np.concatenate(arrays)


def weight_stats(kernels: Iterable[Any], threshold: float = SPARSITY_THRESHOLD) -> tuple[float, float, float]:
    """``(sum |w|, sqrt(sum w**2), share of |w| < threshold)`` over ``kernels`` (arrays or Keras variables)."""
    values = _absolute_values(kernels)
    return float(values.sum()), float(np.sqrt(np.square(values).sum())), float(np.mean(values < threshold))


def sparsity(model_or_kernels: Any, threshold: float = SPARSITY_THRESHOLD) -> float:
    """The share of near-zero penalized weights of a Keras model (or of the given kernels / arrays)."""
    kernels = penalized_kernels(model_or_kernels) if hasattr(model_or_kernels, "layers") else model_or_kernels
    return weight_stats(kernels, threshold)[2]
