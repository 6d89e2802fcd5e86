"""The recipe's bounds are the ones training needs: derived from the split and the architecture, checked here
against the real split and layer arithmetic (no Keras)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support import CIFAR_DIR
from trainer import ARCHITECTURES, count_training_images
from trainer._architecture import MIN_WIDTH
from trainer._data import _balanced_subset, _stratified_split
from trainer._recipe import MAX_VAL_FRACTION, MIN_TRAIN_SIZE

# No Keras here: the JAX pass of `make test` would only repeat these.
pytestmark = pytest.mark.one_backend


@pytest.mark.parametrize("val_fraction", [1e-6, 0.1, 0.5, np.nextafter(MAX_VAL_FRACTION, 0)])
def test_every_allowed_train_size_and_val_fraction_leaves_each_class_in_both_splits(val_fraction):
    labels = np.repeat(np.arange(10), 60)
    for train_size in range(MIN_TRAIN_SIZE, MIN_TRAIN_SIZE + 25):
        rng = np.random.default_rng(train_size)
        pool = _balanced_subset(labels, train_size, rng)
        train, val = _stratified_split(labels[pool], float(val_fraction), rng)
        assert set(labels[pool][train]) == set(labels[pool][val]) == set(range(10)), (train_size, val_fraction)


def test_the_first_refused_val_fraction_would_leave_a_class_without_training_images():
    labels = np.repeat(np.arange(10), 2)  # train_size 20: two images a class
    with pytest.raises(ValueError, match="leaves no training images"):
        _stratified_split(labels, MAX_VAL_FRACTION, np.random.default_rng(0))


def test_min_width_is_where_the_narrowest_layer_would_round_to_no_units():
    units = [layer.units for architecture in ARCHITECTURES.values() for layer in architecture.layers if layer.units]
    assert all(round(count * np.nextafter(MIN_WIDTH, 1)) >= 1 for count in units)
    assert min(round(count * MIN_WIDTH) for count in units) == 0


def test_training_images_are_counted_without_decoding_them():
    assert count_training_images(CIFAR_DIR) == 600
