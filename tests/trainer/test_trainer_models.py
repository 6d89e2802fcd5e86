"""The two networks: parameter count, the L1/L2 penalty, where the dropouts sit, invalid configs."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from trainer import BestConfig, RegularizationConfig, build_model
from trainer._models import Knobs, build_search_model

CONFIG = RegularizationConfig(weight_decay=1e-3, l1_ratio=0.25, dropout_conv=0.35, dropout_dense=0.45)


def kernels(model: keras.Model) -> list:
    return [layer.kernel for layer in model.layers if hasattr(layer, "kernel")]


def set_known_weights(model: keras.Model, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    values = []
    for kernel in kernels(model):
        value = rng.normal(0.0, 0.1, size=kernel.shape).astype("float32")
        kernel.assign(value)
        values.append(value.astype(np.float64))
    return values


def penalty(model: keras.Model) -> float:
    return float(sum(float(loss) for loss in model.losses))


def test_baseline_has_the_books_309290_parameters():
    model = build_model(RegularizationConfig(), "baseline")
    assert model.count_params() == 309_290
    assert isinstance(model, keras.Model) and not isinstance(model, keras.Sequential)  # Functional


def test_penalty_is_l1_sum_abs_plus_l2_sum_squares_on_every_kernel():
    model = build_model(CONFIG, "baseline", width=0.25)
    values = set_known_weights(model)
    expected = CONFIG.l1 * sum(np.abs(v).sum() for v in values) + CONFIG.l2 * sum(np.square(v).sum() for v in values)
    assert len(values) == 7  # six Conv2D + the classifier
    assert penalty(model) == pytest.approx(expected, rel=1e-5)
    for layer in model.layers:
        if hasattr(layer, "kernel"):
            regularizer = layer.kernel_regularizer
            assert isinstance(regularizer, keras.regularizers.L1L2)
            assert (regularizer.l1, regularizer.l2) == pytest.approx((CONFIG.l1, CONFIG.l2))
        if hasattr(layer, "bias") and layer.bias is not None:
            assert getattr(layer, "bias_regularizer", None) is None  # biases are not penalized


@pytest.mark.parametrize("model_name", ["baseline", "vgg"])
def test_search_model_computes_the_same_function_and_penalty(model_name):
    plain = build_model(CONFIG, model_name, width=0.25)
    searchable = build_search_model(Knobs(CONFIG), model_name, width=0.25)
    set_known_weights(plain, seed=1)
    network = [variable for layer in searchable.layers for variable in layer.weights]  # all but the knobs
    for variable, value in zip(network, plain.get_weights(), strict=True):
        variable.assign(value)
    images = np.random.default_rng(2).integers(0, 256, size=(4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(searchable(images)), keras.ops.convert_to_numpy(plain(images)), rtol=1e-5, atol=1e-6)
    assert penalty(searchable) == pytest.approx(penalty(plain), rel=1e-5)
    assert [w.path for w in network] == [w.path for w in plain.weights]
    # The knobs are the model's state too (the compiled step reads them on every backend), and nothing else is.
    assert [w.path for w in searchable.weights][len(network):] == ["knobs/l1", "knobs/l2", "knobs/dropout_conv", "knobs/dropout_dense"]


@pytest.mark.parametrize(("l1_ratio", "pure"), [(0.0, "l2"), (1.0, "l1")])
def test_l1_ratio_zero_and_one_give_pure_l2_and_pure_l1(l1_ratio, pure):
    config = RegularizationConfig(weight_decay=2e-3, l1_ratio=l1_ratio)
    model = build_model(config, "vgg", width=0.25)
    values = set_known_weights(model, seed=3)
    sum_abs = sum(np.abs(v).sum() for v in values)
    sum_squares = sum(np.square(v).sum() for v in values)
    if pure == "l2":
        assert (config.l1, config.l2) == (0.0, 2e-3)
        assert penalty(model) == pytest.approx(2e-3 * sum_squares, rel=1e-5)
    else:
        assert (config.l1, config.l2) == (2e-3, 0.0)
        assert penalty(model) == pytest.approx(2e-3 * sum_abs, rel=1e-5)


def layer_sequence(model: keras.Model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


def test_baseline_dropouts_follow_each_pooling_block_and_precede_the_classifier():
    model = build_model(CONFIG, "baseline", width=0.25)
    layers = model.layers
    dropouts = [(index, layer) for index, layer in enumerate(layers) if isinstance(layer, keras.layers.Dropout)]
    assert [layer.rate for _, layer in dropouts] == [0.35, 0.35, 0.35, 0.45]
    for index, _ in dropouts[:3]:
        assert isinstance(layers[index - 1], keras.layers.MaxPooling2D)
    last_index, _ = dropouts[-1]
    assert isinstance(layers[last_index - 1], keras.layers.Flatten)
    assert layers[last_index + 1] is layers[-1] and layers[-1].name == "classifier"
    # three blocks of [Conv2D, ReLU, BatchNormalization] x 2
    assert layer_sequence(model)[2:8] == ["Conv2D", "Activation", "BatchNormalization"] * 2
    assert [layer.filters for layer in layers if isinstance(layer, keras.layers.Conv2D)] == [8, 8, 16, 16, 32, 32]


def test_vgg_dropouts_follow_each_pooling_block_and_the_dense_layer():
    model = build_model(CONFIG, "vgg")
    layers = model.layers
    dropouts = [(index, layer) for index, layer in enumerate(layers) if isinstance(layer, keras.layers.Dropout)]
    assert [layer.rate for _, layer in dropouts] == [0.35, 0.35, 0.45]
    assert all(isinstance(layers[index - 1], keras.layers.MaxPooling2D) for index, _ in dropouts[:2])
    dense_index, _ = dropouts[-1]
    assert layers[dense_index - 1].name == "dense" and layers[dense_index - 1].units == 256
    assert layers[dense_index + 1].name == "classifier"
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in layers)


def test_best_config_supplies_model_and_width():
    best = BestConfig(model="vgg", regularization=CONFIG, width=0.5)
    model = build_model(best)
    assert model.name == "vgg"
    assert model.get_layer("dense").units == 128


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"weight_decay": 0.0}, "weight_decay"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"l1_ratio": -0.1}, "l1_ratio"),
        ({"l1_ratio": 1.5}, "l1_ratio"),
        ({"dropout_conv": -0.1}, "dropout_conv"),
        ({"dropout_dense": 1.0}, "dropout_dense"),
    ],
)
def test_invalid_configs_raise_value_error_naming_the_field(values, field):
    with pytest.raises(ValueError, match=field):
        RegularizationConfig(**values)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"model": "resnet"}, "model"), ({"width": 0}, "width"), ({"num_classes": 1}, "num_classes")],
)
def test_invalid_model_arguments_raise_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        build_model(CONFIG, **kwargs)
