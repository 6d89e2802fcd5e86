"""The report's two per-trial measures on a tiny hand-set network, against a hand computation: the sparsity
(share of penalized kernel weights with |w| < 1e-3) and the generalization gap (inference-mode accuracy on
the fixed training sample minus the validation accuracy)."""

from __future__ import annotations

import types

import keras
import numpy as np
import pytest

from trainer import TrialMetrics, sparsity
from trainer._gap import measure_gap, train_sample_indices
from trainer._sparsity import SPARSITY_THRESHOLD, penalized_kernels, weight_stats


def tiny_network() -> keras.Model:
    """2 inputs -> Dense(3, relu) -> Dropout -> Dense(2, softmax), every weight set by hand."""
    inputs = keras.Input((2,))
    hidden = keras.layers.Dense(3, activation="relu", kernel_regularizer=keras.regularizers.L1L2(1e-3, 0.0), name="hidden")(inputs)
    dropped = keras.layers.Dropout(0.5)(hidden)
    outputs = keras.layers.Dense(2, activation="softmax", name="out")(dropped)
    model = keras.Model(inputs, outputs)
    # hidden kernel (2x3): 0.0, 5e-4 and -9e-4 are below 1e-3; 1e-3 itself, -0.2, 0.7 are not.
    model.get_layer("hidden").set_weights([np.array([[0.0, 5e-4, 1.0], [-9e-4, 1e-3, 1.0]]), np.array([7.0, 7.0, 0.0])])
    # out kernel (3x2): hidden unit 2 (= x0 + x1) votes class 1, units 0 and 1 (constant 7) vote class 0 a little.
    model.get_layer("out").set_weights([np.array([[0.1, 0.0], [0.1, 0.0], [0.0, 1.0]]), np.array([0.0, 0.0])])
    return model


def test_sparsity_is_the_share_of_near_zero_kernel_weights_by_hand():
    model = tiny_network()
    assert [tuple(kernel.shape) for kernel in penalized_kernels(model)] == [(2, 3), (3, 2)]  # kernels only: no bias
    # By hand: hidden has 3 of 6 below 1e-3 (0, 5e-4, -9e-4; 1e-3 is not below); out has 3 of 6 zeros. 6 of 12.
    assert SPARSITY_THRESHOLD == 1e-3
    assert sparsity(model) == pytest.approx(6 / 12)
    l1, l2, share = weight_stats(penalized_kernels(model))
    assert l1 == pytest.approx(0.0 + 5e-4 + 1.0 + 9e-4 + 1e-3 + 1.0 + 0.1 + 0.1 + 1.0)
    assert l2 == pytest.approx(np.sqrt(5e-4**2 + 1 + 9e-4**2 + 1e-3**2 + 1 + 0.01 + 0.01 + 1))
    assert share == pytest.approx(0.5)
    assert sparsity([np.zeros(4), np.ones(4)]) == 0.5  # plain arrays too
    assert sparsity(model, threshold=2e-3) == pytest.approx(7 / 12)  # 1e-3 counts now
    with pytest.raises(ValueError, match="no penalized weights"):
        sparsity([])


def test_gap_is_train_minus_validation_accuracy_in_inference_mode_by_hand():
    model = tiny_network()
    # The network predicts class 1 exactly when x0 + x1 > 1.4 (softmax of [1.4, x0 + x1]); dropout is off in inference.
    x_train = np.array([[0, 0], [1, 1], [2, 0], [0, 0.5], [3, 3], [0.1, 0.1]], dtype=np.float32)
    y_train = np.array([0, 1, 1, 0, 1, 1])  # the last one is wrong: 5 of 6 right
    x_val = np.array([[0, 0], [1, 1], [0.2, 0.2], [2, 2]], dtype=np.float32)
    y_val = np.array([0, 0, 0, 1])  # [1, 1] is predicted 1: 3 of 4 right
    data = types.SimpleNamespace(x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    measured = measure_gap(model, data, sample_size=6, seed=0)
    assert (measured.train_accuracy, measured.val_accuracy) == (pytest.approx(5 / 6), pytest.approx(3 / 4))
    assert measured.gap == pytest.approx(5 / 6 - 3 / 4)
    # On a fixed sample of 3 training images: the hand count over those images.
    sample = train_sample_indices(6, 3, seed=0)
    right = sum(int((x_train[i].sum() > 1.4) == y_train[i]) for i in sample)
    assert measure_gap(model, data, sample_size=3, seed=0).train_accuracy == pytest.approx(right / 3)


def test_the_trial_metrics_carry_the_sparsity():
    """What the worker stores with a trial (its user attributes) includes the sparsity."""
    assert "sparsity" in TrialMetrics.model_fields
    assert TrialMetrics.model_validate({"val_accuracy": 0.5, "sparsity": 0.25}).sparsity == 0.25
